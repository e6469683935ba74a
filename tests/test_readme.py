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
    pinned = re.search(r"^gradio(?:\[\w+\])?==(\S+)$", (ROOT / "requirements.txt").read_text(), re.M).group(1)
    assert f"sdk_version: {pinned}" in front and "app_file: app.py" in front


def test_the_licence_is_stated_where_the_hub_and_a_reader_look():
    """A LICENSE file, the Space's front matter naming it, and the README saying what binds MusicGen-derived θ's."""
    readme = (ROOT / "README.md").read_text()
    front = readme.split("---")[1]
    assert (ROOT / "LICENSE").read_text().startswith("MIT License") and re.search(r"^license: mit$", front, re.M)
    licences = readme.split("## Licences")[1].split("\n## ")[0]
    assert "CC-BY-NC 4.0" in licences and "TimGM6mb GPL-2.0" in licences


def test_the_front_matter_describes_the_space_and_the_real_base_variant_is_complete():
    """The nano Space's metadata as Spaces reads it, and the documented variant for a real MusicGen base: valid YAML,
    MusicGen's licence, a GPU, and every Hub repo it loads preloaded at build time."""
    import yaml  # noqa: PLC0415 (a Gradio dependency)

    readme = (ROOT / "README.md").read_text()
    front = yaml.safe_load(readme.split("---")[1])
    assert front["license"] == "mit" and front["suggested_hardware"] == "cpu-basic"
    assert 0 < len(front["short_description"]) <= 60 and "music" in front["tags"] and "models" not in front
    spaces = readme.split("## Host it on Hugging Face Spaces")[1].split("\n## ")[0]
    variant = yaml.safe_load(spaces.split("```yaml")[1].split("```")[0])
    assert variant["license"] == "cc-by-nc-4.0" and variant["suggested_hardware"] != "cpu-basic"
    assert "facebook/musicgen-small" in variant["models"] and set(variant["preload_from_hub"]) == set(variant["models"])
    assert len(variant["short_description"]) <= 60 and "ZeroGPU is not supported" in spaces
