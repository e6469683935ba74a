"""The README is the front door: every file it links to exists."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_relative_link_in_the_readmes_exists():
    for readme in [ROOT / "README.md", *sorted((ROOT / "weights").glob("**/README.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)\)", readme.read_text()):
            if not re.match(r"[a-z]+://", target):
                assert (readme.parent / target).exists(), f"{readme.relative_to(ROOT)} links to missing {target}"


def test_the_space_front_matter_runs_the_pinned_gradio():
    front = (ROOT / "README.md").read_text().split("---")[1]
    pinned = re.search(r"^gradio==(\S+)$", (ROOT / "requirements.txt").read_text(), re.M).group(1)
    assert f"sdk_version: {pinned}" in front and "app_file: app.py" in front
