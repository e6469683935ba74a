"""Add the SHA-256 checksum of the tensor data to safetensors files that lack it, or check the ones that have it.

    python -m training.sign weights/theta_q weights/theta_d      # sign every .safetensors under these paths
    python -m training.sign --check weights                      # verify; exit 1 naming any unsigned or bad file
    python -m training.sign --manifest weights                   # write engine/weights_manifest.json (trust anchor)
    MUSIC_WEIGHTS_KEY=... python -m training.sign --hmac runs/x  # add an HMAC a server with that key trusts

The checksum shows damage, not tampering (anyone can re-sign a file); the manifest and the HMAC are what a server
trusts (`engine.trust`).

Every file this project writes is signed when written (`engine.checkpoint.save_state`); this is for files
written before that, and for CI's check that everything shipped is signed. Only the header changes: the tensor
bytes, and so every model, stay exactly as they were.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine.checkpoint import CheckpointError, data_digest, is_signed, sign, verify_checksum
from engine.shipped import ROOT
from engine.trust import HMAC_KEY, KEY_ENV, MANIFEST, key_from_environment, keyed_digest, write_manifest


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
    p.add_argument("--manifest", action="store_true",
                   help=f"write {MANIFEST}: the digests of every file under the paths (the shipped weights)")
    p.add_argument("--hmac", action="store_true", help=f"add an HMAC of each file's data with ${KEY_ENV}")
    args = p.parse_args(argv)
    if args.manifest:
        entries = write_manifest(files(args.paths), ROOT, ROOT / MANIFEST)
        print(f"wrote {MANIFEST}: {len(entries)} files")
        return
    if args.hmac:
        key = key_from_environment()
        if not key:
            raise SystemExit(f"--hmac needs the key in ${KEY_ENV}")
        for f in files(args.paths):
            verify_checksum(f)
            sign(f, {HMAC_KEY: keyed_digest(data_digest(f), key)})
            print(f"signed {f} with an HMAC")
        return
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
