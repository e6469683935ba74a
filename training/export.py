"""Write a training run's result as a shipped folder (fp16 weights and the config the engine loads).

    python -m training.export nano runs/nano weights/nano                 # decoder, text projection, nano.json
    python -m training.export distill runs/theta_q weights/theta_q        # the student's decoder
    python -m training.export embedding runs/E9 weights/embedding         # E
    python -m training.export scorers runs/Q4 weights/quality             # the quality scorer

Each export writes the folder's model card metadata (`training.cards`). `--push-to-hub OWNER/NAME` then uploads the
folder to that Hub model repo (created if missing; needs a token: `huggingface-cli login` or HF_TOKEN), and
`--dry-run` says what it would upload without any network. `folder` publishes a folder as it is:

    python -m training.export folder weights/theta_q --push-to-hub me/musicgen-nano-theta-q --dry-run
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from engine.checkpoint import copy_as_fp16
from training import cards, pretrain_nano, train_embedding, train_scorers

UPLOADED = ["*.safetensors", "*.json", "README.md", "*.csv", "*.png"]  # weights, configs, card, logs and figures


def export_distill(run: Path, dest: Path) -> None:
    copy_as_fp16(run / "decoder.safetensors", dest / "decoder.safetensors")
    if (run / "config.json").is_file():  # the run's settings: what the card's lineage and licence are read from
        shutil.copyfile(run / "config.json", dest / "config.json")


EXPORTS = {"nano": pretrain_nano.export, "distill": export_distill, "embedding": train_embedding.export,
           "scorers": train_scorers.export, "folder": lambda run, dest: None}


def publish(folder: Path, repo_id: str, dry_run: bool = False, api=None) -> list[str]:
    """Upload a model folder to the Hub repo `repo_id` with its card's metadata written for that owner (θ's name
    their base by it); returns the files uploaded (or, `dry_run`, that would be). `api`: an HfApi (tests pass a
    stand-in)."""
    if not cards.hub.REPO_ID.match(repo_id) or "@" in repo_id:
        raise ValueError(f"--push-to-hub takes a repo id owner/name, got {repo_id!r}")
    owner = repo_id.split("/")[0]
    files = sorted(str(f.relative_to(folder)) for pattern in UPLOADED for f in folder.glob(pattern) if f.is_file())
    if dry_run:
        print(f"would upload to https://huggingface.co/{repo_id}: {', '.join(files)}")
        print(cards.render(folder, owner).split("\n---\n")[0] + "\n---")
        return files
    cards.write(folder, owner)
    if api is None:
        from huggingface_hub import HfApi  # noqa: PLC0415 (only a real push needs it)

        api = HfApi()
    api.create_repo(repo_id, repo_type="model", exist_ok=True)
    api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=str(folder), allow_patterns=UPLOADED,
                      commit_message=f"Upload {folder.name} (python -m training.export)")
    print(f"uploaded {len(files)} files to https://huggingface.co/{repo_id}")
    return files


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=sorted(EXPORTS), help="which trainer made the run")
    p.add_argument("run", type=Path, help="the run folder (--out of the training command)")
    p.add_argument("dest", type=Path, nargs="?", help="the folder to write (kind folder: none, RUN is the folder)")
    p.add_argument("--push-to-hub", metavar="OWNER/NAME", help="then upload the folder to this Hub model repo")
    p.add_argument("--dry-run", action="store_true", help="with --push-to-hub: say what would be uploaded, no network")
    args = p.parse_args(argv)
    dest = args.dest or (args.run if args.kind == "folder" else p.error("the folder to write (dest) is missing"))
    EXPORTS[args.kind](args.run, dest)
    if args.kind != "folder":
        cards.write(dest)
        print(f"wrote {dest}")
    if args.push_to_hub:
        publish(dest, args.push_to_hub, args.dry_run)


if __name__ == "__main__":
    main()
