"""The README is the front door: every file it links to exists."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_relative_link_in_the_readmes_exists():
    for readme in [ROOT / "README.md", *sorted((ROOT / "weights").glob("**/README.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)\)", readme.read_text()):
            if not re.match(r"[a-z]+://", target):
                assert (readme.parent / target).exists(), f"{readme.relative_to(ROOT)} links to missing {target}"
