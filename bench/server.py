"""Run `app.py` as a user starts it, on a free localhost port, until it answers: for the end-to-end tests, the probe
suite and the soak benchmark."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_app(flags: list[str], folder: Path, env: dict | None = None, timeout: float = 120):
    """Start `python app.py --port P FLAGS` (output to folder/app.log, analytics off) and yield (url, log path,
    process) once its page answers; stop it at the end. Raises RuntimeError with the log's tail if it does not
    start within `timeout` seconds."""
    port, log = free_port(), Path(folder) / "app.log"
    env = dict(env if env is not None else os.environ, GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1")
    t0 = time.time()
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "app.py", "--port", str(port), *flags], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        while True:
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() - t0 > timeout:
                    raise RuntimeError(f"the app did not start: {log.read_text()[-3000:]}") from None
                time.sleep(0.5)
        print(f"app ready in {time.time() - t0:.1f} s")
        yield url, log, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
