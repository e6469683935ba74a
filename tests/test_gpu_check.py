"""bench/gpu_check.sh --dry-run: every path of the GPU check, on the CPU with tiny shapes (its numbers mean nothing)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHON=sys.executable)  # the interpreter running the tests (a clone may have no .venv)


def test_the_gpu_check_dry_run_passes(tmp_path):
    out = tmp_path / "gpu_check.json"
    run = subprocess.run(["bash", "bench/gpu_check.sh", "--dry-run", "--out", str(out)], cwd=ROOT,
                         capture_output=True, text=True, timeout=300, env=ENV)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(out.read_text())
    rows = result["rows"]
    sampler = [r for r in rows if "ratio" in r]
    assert result["dry_run"] and len(sampler) == 6  # batch 1/4/8 × plain/CFG (fp32 only in the dry run)
    assert all(r["ours_s"] > 0 and r["transformers_s"] > 0 for r in sampler)
    assert any("merge" in r for r in rows)
    assert [r["stage"] for r in rows if "stage" in r] == ["distillation", "RL"]
    assert "sampler float32 batch 8 CFG" in run.stdout and "RL (β = 15" in run.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the real check would run (8 minutes)")
def test_without_a_gpu_the_real_check_says_how_to_run():
    run = subprocess.run(["bash", "bench/gpu_check.sh"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env=ENV)
    assert run.returncode != 0 and "--dry-run" in run.stderr
