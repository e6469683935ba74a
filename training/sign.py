"""Add the SHA-256 checksum of the tensor data to safetensors files that lack it, or check the ones that have it.

    python -m training.sign weights/theta_q weights/theta_d      # sign every .safetensors under these paths
    python -m training.sign --check weights                      # verify; exit 1 naming any unsigned or bad file

Every file this project writes is signed when written (`engine.checkpoint.save_state`); this is for files
written before that, and for CI's check that everything shipped is signed. Only the header changes: the tensor
bytes, and so every model, stay exactly as they were.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine.checkpoint import CheckpointError, is_signed, sign, verify_checksum


def files(paths: list[Path]) -> list[Path]:
    out = []
    for path in paths:
        if not path.exists():
            raise SystemExit(f"{path}: no such file or folder")
        out += sorted(path.rglob("*.safetensors")) if path.is_dir() else [path]
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", type=Path, help="safetensors files or folders holding them")
    p.add_argument("--check", action="store_true", help="verify only: every file signed and intact")
    args = p.parse_args(argv)
    bad = []
    for f in files(args.paths):
        try:
            if args.check and not is_signed(f):
                raise CheckpointError(f"{f}: no checksum (sign it with python -m training.sign {f})")
            verify_checksum(f)
            if not args.check and not is_signed(f):
                sign(f)
                print(f"signed {f}")
        except CheckpointError as e:
            bad.append(str(e))
    for line in bad:
        print(line, file=sys.stderr)
    if bad:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
