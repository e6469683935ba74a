"""Write a training run's result as a shipped folder (fp16 weights and the config the engine loads).

    python -m training.export nano runs/nano weights/nano                 # decoder, text projection, nano.json
    python -m training.export distill runs/theta_q weights/theta_q        # the student's decoder
    python -m training.export embedding runs/E9 weights/embedding         # E
    python -m training.export scorers runs/Q4 weights/quality             # the quality scorer
"""

from __future__ import annotations

import argparse
from pathlib import Path

from engine.checkpoint import copy_as_fp16
from training import pretrain_nano, train_embedding, train_scorers


def export_distill(run: Path, dest: Path) -> None:
    copy_as_fp16(run / "decoder.safetensors", dest / "decoder.safetensors")


EXPORTS = {"nano": pretrain_nano.export, "distill": export_distill, "embedding": train_embedding.export,
           "scorers": train_scorers.export}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=sorted(EXPORTS), help="which trainer made the run")
    p.add_argument("run", type=Path, help="the run folder (--out of the training command)")
    p.add_argument("dest", type=Path, help="the folder to write")
    args = p.parse_args(argv)
    EXPORTS[args.kind](args.run, args.dest)
    print(f"wrote {args.dest}")


if __name__ == "__main__":
    main()
