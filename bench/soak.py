"""Soak the running app: many generations from as many distinct sessions; do memory and disk plateau?

    python -m bench.soak                        # 600 generations, 600 sessions, 4 client threads (~4 minutes)
    python -m bench.soak --generations 2000 --file-lifetime 120

Starts `app.py` (shipped nano weights) with a private temporary folder as its TMPDIR, sends
generations of one short clip, each from a new session (as 600 browser tabs would), with a Stop call from every
fifth session, and every `--every` generations records the server's resident memory (RSS) and the bytes on disk in
its temporary folder (Gradio's copies of served files, in the app's private cache folder, plus the app's own WAV
folders). The bounds that should hold: Gradio keeps state for at most MAX_SESSIONS sessions (app.py), the app keeps
at most --keep-outputs WAV folders, and the app's janitor deletes served files once --file-lifetime seconds old.
So after the first lifetime both curves should flatten:
the report compares the growth in the last third of the run with the first third.
Writes bench/results/soak.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil

from bench.server import running_app

ROOT = Path(__file__).resolve().parents[1]


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())


def generate(api: str, i: int) -> bool:
    """One generation from a new session; True if it returned a clip."""
    session = f"soak-{i}-{os.getpid()}"
    data = ["Rock song.", 1, 0.5, str(i), 1.0, "θ_q ↔ θ_d", (i % 11) / 10, False, 3.0, "Bad audio quality.", 0.0,
            0.9]
    event = _post(f"{api}/call/generate", {"data": data, "session_hash": session})["event_id"]
    with urllib.request.urlopen(f"{api}/call/generate/{event}", timeout=120) as r:
        ok = "event: complete" in r.read().decode()
    if i % 5 == 0:
        _post(f"{api}/run/stop", {"data": [], "session_hash": session})
    return ok


def disk_bytes(folder: Path) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass  # deleted while walking
    return total


def _mb(folders) -> float:
    return round(sum(disk_bytes(p) for p in folders) / 2**20, 2)


def soak(args) -> dict:
    with tempfile.TemporaryDirectory(prefix="soak-") as folder:
        tmp = Path(folder)
        env = {k: v for k, v in os.environ.items() if k != "GRADIO_TEMP_DIR"}  # the app's own private cache folder
        env["TMPDIR"] = str(tmp)
        flags = ["--ratings-db", str(tmp / "r.sqlite"), "--file-lifetime", str(args.file_lifetime)]
        with running_app(flags, tmp, env) as (url, _, proc), ThreadPoolExecutor(args.threads) as pool:
            api, server = url + "gradio_api", psutil.Process(proc.pid)
            samples, failures, t0 = [], 0, time.time()
            for first in range(0, args.generations, args.every):
                batch = range(first, min(first + args.every, args.generations))
                failures += sum(not ok for ok in pool.map(lambda i: generate(api, i), batch))
                samples.append(dict(generations=batch[-1] + 1, seconds=round(time.time() - t0, 1),
                                    rss_mb=round(server.memory_info().rss / 2**20, 1),
                                    disk_mb=round(disk_bytes(tmp) / 2**20, 2),
                                    gradio_cache_mb=_mb(tmp.glob("cfg-distill-served-*")),
                                    app_outputs_mb=_mb(p for p in tmp.glob("cfg-distill-*")
                                                       if not p.name.startswith("cfg-distill-served-"))))
                print(samples[-1], flush=True)
    return dict(generations=args.generations, sessions=args.generations, failures=failures,
                file_lifetime_s=args.file_lifetime, samples=samples)


def growth(samples: list[dict], key: str) -> tuple[float, float]:
    """Growth of `key` over the first and over the last third of the run."""
    third = max(len(samples) // 3, 1)
    first, last = samples[:third + 1], samples[-third - 1:]
    return first[-1][key] - first[0][key], last[-1][key] - last[0][key]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--generations", type=int, default=600, help="generations, each from a new session")
    p.add_argument("--threads", type=int, default=4, help="client threads sending them")
    p.add_argument("--every", type=int, default=50, help="generations between two measurements")
    p.add_argument("--file-lifetime", type=int, default=60, help="the app's --file-lifetime for the run (s)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "soak.json"))
    args = p.parse_args(argv)
    result = soak(args)
    for key in ("rss_mb", "disk_mb", "gradio_cache_mb", "app_outputs_mb"):
        early, late = growth(result["samples"], key)
        result[f"{key}_growth_first_third"], result[f"{key}_growth_last_third"] = round(early, 2), round(late, 2)
        print(f"{key}: +{early:.1f} over the first third of the run, +{late:.1f} over the last third")
    print(f"failures: {result['failures']} of {result['generations']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
