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


def test_the_licence_is_stated_where_the_hub_and_a_reader_look():
    """A LICENSE file, the Space's front matter naming it, and the README saying what binds MusicGen-derived θ's."""
    readme = (ROOT / "README.md").read_text()
    front = readme.split("---")[1]
    assert (ROOT / "LICENSE").read_text().startswith("MIT License") and re.search(r"^license: mit$", front, re.M)
    licences = readme.split("## Licences")[1].split("\n## ")[0]
    assert "CC-BY-NC 4.0" in licences and "TimGM6mb GPL-2.0" in licences
