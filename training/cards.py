"""Model cards with the Hub's metadata: each shipped folder's README.md carries, above its text, the YAML the Hugging
Face Hub reads for search, the licence badge and lineage (licence, base model, pipeline, tags, metrics), made with
huggingface_hub's `ModelCard`/`ModelCardData` from what the folder holds, so it cannot drift from the weights.

    python -m training.cards              # (re)write the metadata of every shipped card; the text below it is kept
    python -m training.cards --check      # exit 1, naming the card, where the metadata differs from what it should be

What a card says is read from the folder: its kind (nano.json: a nano base; config.json with a β: a distilled θ;
embedding.safetensors: E; quality.safetensors: the quality scorers) and, for a θ, the run's `base`/`init` settings.
A θ finetuned from a real MusicGen (`base` a Hub id such as facebook/musicgen-small) inherits its CC-BY-NC 4.0 licence
and names it as base model; everything trained here from scratch is MIT, like the code (README, "Licences").
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from engine import hub

HUB_OWNER = "cfg-distill"  # the namespace of the shipped folders' repos (`--push-to-hub` may name another)
REPO_NAMES = {"nano": "musicgen-nano", "theta_q": "musicgen-nano-theta-q", "theta_d": "musicgen-nano-theta-d",
              "theta_b15": "musicgen-nano-theta-b15", "embedding": "nano-diversity-embedding",
              "embedding_e4": "nano-diversity-embedding-e4", "quality": "nano-quality-scorers"}
MUSICGEN_LICENSE = "cc-by-nc-4.0"  # the MusicGen weights' licence, which binds anything finetuned from them
OWN_LICENSE = "mit"
COMMON_TAGS = ["music", "musicgen", "cfg-distillation", "diversity-rewarded-cfg-distillation"]
KINDS = {  # kind: (pipeline tag, tags, metric names the card reports)
    "nano": ("text-to-audio", ["text-to-music", "symbolic-music"], ["cross_entropy", "exact_quality"]),
    "theta": ("text-to-audio", ["text-to-music", "reinforce", "model-merging"],
              ["kl_divergence", "diversity", "quality"]),
    "embedding": ("feature-extraction", ["audio-embedding", "contrastive-learning"], ["recall", "diversity"]),
    "quality": ("audio-classification", ["audio-quality", "text-audio-adherence"], ["accuracy", "roc_auc"]),
}


def kind_of(folder: Path) -> str:
    """What a shipped or exported folder holds (ValueError naming it if none of the known kinds)."""
    if (folder / "nano.json").is_file():
        return "nano"
    if (folder / "embedding.safetensors").is_file():
        return "embedding"
    if (folder / "quality.safetensors").is_file():
        return "quality"
    if (folder / "config.json").is_file() and "beta" in json.loads((folder / "config.json").read_text()):
        return "theta"
    raise ValueError(f"{folder}: not a model folder (no nano.json, embedding, quality scorer or θ config.json)")


def repo_of(source: str | None, owner: str) -> str | None:
    """The Hub repo a run's `base`/`init` setting names: a shipped folder's own repo, a Hub id as it is; None for
    anything else (a run folder outside the repo has no repo)."""
    if not source:
        return None
    name = Path(source).name
    if Path(source).parent.name == "weights" and name in REPO_NAMES:
        return f"{owner}/{REPO_NAMES[name]}"
    return source if hub.REPO_ID.match(source) and not Path(source).exists() else None


def lineage(folder: Path, kind: str, owner: str) -> tuple[str | None, str]:
    """(base model repo or None, licence): a θ comes from its run's `init` (θ_d: θ_q) or else its `base`; the
    quality scorers' audio tower starts from E; nano and E have no outside weights."""
    settings = {}
    for name in ("config.json", "model.json"):
        if kind != "nano" and (folder / name).is_file():
            settings = json.loads((folder / name).read_text())
    base = settings.get("base") if kind == "theta" else None
    parent = repo_of(settings.get("init") or base, owner) if kind == "theta" else (
        repo_of(settings.get("init_audio"), owner) if kind == "quality" else None)
    real_musicgen = bool(base) and repo_of(base, owner) == base  # a Hub id, not one of our folders
    return parent, MUSICGEN_LICENSE if real_musicgen else OWN_LICENSE


def card_data(folder: str | Path, owner: str = HUB_OWNER):
    """The Hub metadata of a model folder (huggingface_hub.ModelCardData)."""
    from huggingface_hub import ModelCardData  # noqa: PLC0415 (a Gradio dependency; only cards need it)

    folder = Path(folder)
    kind = kind_of(folder)
    pipeline, tags, metrics = KINDS[kind]
    parent, licence = lineage(folder, kind, owner)
    extra = dict(base_model=parent, base_model_relation="finetune") if parent else {}
    tags = COMMON_TAGS + tags + ([] if parent else ["trained-from-scratch"])
    return ModelCardData(license=licence, library_name="pytorch", pipeline_tag=pipeline, tags=tags, metrics=metrics,
                         **extra)


def render(folder: str | Path, owner: str = HUB_OWNER) -> str:
    """The card's full text: the metadata, then the card's own text (kept as written; none: a title)."""
    from huggingface_hub import ModelCard  # noqa: PLC0415

    path = Path(folder) / "README.md"
    text = ModelCard.load(path).text if path.is_file() else f"# {Path(folder).name}\n"
    return f"---\n{card_data(folder, owner).to_yaml()}\n---\n{text}"


def write(folder: str | Path, owner: str = HUB_OWNER) -> Path:
    path = Path(folder) / "README.md"
    content = render(folder, owner)
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(content)
    tmp.replace(path)  # atomic: a reader sees the old card or the new one
    return path


def shipped_folders(root: Path = Path("weights")) -> list[Path]:
    return [root / name for name in REPO_NAMES if (root / name).is_dir()]


def stale(folders: list[Path], owner: str = HUB_OWNER) -> list[str]:
    """The cards whose metadata is not what `card_data` says (or that do not parse), with what differs."""
    from huggingface_hub import ModelCard  # noqa: PLC0415

    out = []
    for folder in folders:
        want = card_data(folder, owner).to_dict()
        try:
            have = ModelCard.load(folder / "README.md").data.to_dict()
        except Exception as e:  # noqa: BLE001 (any parse failure is the finding)
            out.append(f"{folder}/README.md: does not parse as a model card ({e})")
            continue
        if have != want:
            keys = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))
            out.append(f"{folder}/README.md: metadata differs in {', '.join(keys)}")
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="*", type=Path, help="model folders (default: every shipped one)")
    p.add_argument("--check", action="store_true", help="only check; exit 1 if a card is stale")
    args = p.parse_args(argv)
    folders = args.folders or shipped_folders()
    if args.check:
        problems = stale(folders)
        print("\n".join(problems) or f"{len(folders)} cards up to date")
        sys.exit(1 if problems else 0)
    for folder in folders:
        print(f"wrote {write(folder)}")


if __name__ == "__main__":
    main()
