"""A hostile-but-fair probe of the running app (localhost only, bounded loops): what issue 18 found, replayed.

The app runs as a user starts it (shipped nano weights) with pruning made active early (--keep-outputs 4). Requests go
through Gradio's HTTP API as any client would send them, including malformed ones a browser never sends."""
import json
import os
import re
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from bench.server import running_app

pytestmark = pytest.mark.slow  # a real server: run by `make test-slow` (CI runs it as its own step)

GOOD = ["Rock song.", 1, 0.5, "5", 1.0, "θ_q ↔ θ_d", 0.5, False, 5.0, "", 0.1, 0.0]  # the 12 inputs of /generate


class App:
    def __init__(self, url: str, log: Path):
        self.url, self.api, self.log = url, url + "gradio_api", log

    def post(self, path: str, body: dict, timeout: float = 60, cookie: str = "", client: str = ""):
        """`client`: the address a proxy on this machine says the request came from (uvicorn trusts loopback's
        X-Forwarded-For), so one test process can be many clients."""
        headers = {"Content-Type": "application/json"} | ({"Cookie": cookie} if cookie else {})
        headers |= {"X-Forwarded-For": client} if client else {}
        req = urllib.request.Request(self.api + path, json.dumps(body).encode(), headers)
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())

    def submit(self, api: str, data: list, session: str | None = None, cookie: str = "") -> str:
        body = {"data": data} | ({"session_hash": session} if session else {})
        return self.post(f"/call/{api}", body, cookie=cookie)["event_id"]

    def result(self, api: str, event: str) -> tuple[str, object]:
        with urllib.request.urlopen(f"{self.api}/call/{api}/{event}", timeout=120) as r:
            text = r.read().decode()
        kind = re.findall(r"^event: (\w+)", text, re.M)[-1]
        payload = json.loads(re.findall(r"^data: (.*)$", text, re.M)[-1])
        return kind, payload["error"] if kind == "error" else payload

    def call(self, api: str, data: list, session: str | None = None, client: str = "") -> tuple[str, object]:
        """('complete', outputs) or ('error', message) of a queued call, as Gradio's /call API answers it."""
        body = {"data": data} | ({"session_hash": session} if session else {})
        event = self.post(f"/call/{api}", body, client=client)["event_id"]
        with urllib.request.urlopen(f"{self.api}/call/{api}/{event}", timeout=120) as r:
            text = r.read().decode()
        kind = re.findall(r"^event: (\w+)", text, re.M)[-1]
        payload = json.loads(re.findall(r"^data: (.*)$", text, re.M)[-1])
        return kind, payload["error"] if kind == "error" else payload

    def stop(self, session: str) -> None:
        self.post("/run/stop", {"data": [], "session_hash": session})

    def log_text(self) -> str:
        return self.log.read_text()


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("probe")
    flags = ["--ratings-db", str(tmp / "r.sqlite"), "--max-duration", "4", "--keep-outputs", "4", "--concurrency", "2",
             "--mcp"]
    with running_app(flags, tmp) as (url, log, _):
        yield App(url, log)


def test_a_no_clip_is_lost_while_outputs_are_pruned(app):
    """8 threads × 25 requests of one clip from 25 clients, 4 output folders kept: every request gets its clip,
    downloadable."""
    def one(i: int) -> str:
        kind, out = app.call("generate", ["Rock song.", 1, 0.5, str(i), *GOOD[4:]], session=f"load-{i}",
                             client=f"10.0.0.{i % 25}")
        if kind != "complete":
            return f"request {i}: {kind} {out}"
        clip = out[0].get("value") or {}  # an update of the first audio component
        if "url" not in clip:
            return f"request {i}: no clip in {out[0]}"
        with urllib.request.urlopen(clip["url"], timeout=30) as r:
            return "" if len(r.read()) > 1000 else f"request {i}: empty clip"

    with ThreadPoolExecutor(8) as pool:
        failures = [f for f in pool.map(one, range(200)) if f]
    assert failures == []


def test_b_stop_reaches_a_queued_job_before_it_samples(app):
    blockers = [threading.Thread(target=app.call, args=("generate", ["Rock song.", 8, 4.0, str(i), 1.0, "θ_q ↔ θ_d",
                                                                      0.5, True, 5.0, "", 0.1, 0.0], f"blocker-{i}"))
                for i in range(2)]  # both model slots busy (concurrency 2)
    for t in blockers:
        t.start()
    time.sleep(0.5)
    result = {}
    queued = threading.Thread(target=lambda: result.update(r=app.call("generate", GOOD, session="stopper")))
    queued.start()
    time.sleep(0.3)
    app.stop("stopper")
    queued.join(timeout=120)
    for t in blockers:
        t.join(timeout=120)
    assert result["r"] == ("error", "Stopped.")
    assert "generate: stopped before it started by the user" in app.log_text()
    assert app.call("generate", GOOD, session="stopper")[0] == "complete"  # the session's next request runs


MALFORMED = {  # what a hand-made request sends -> what the error must say
    "clips as text": (["Rock song.", "3", *GOOD[2:]], "clips must be a whole number"),
    "clips 2.5": (["Rock song.", 2.5, *GOOD[2:]], "clips must be a whole number, got 2.5"),
    "clips null": (["Rock song.", None, *GOOD[2:]], "clips must be a whole number"),
    "λ as a list": ([*GOOD[:6], [0.5], *GOOD[7:]], "λ must be a number"),
    "compare 'yes'": ([*GOOD[:7], "yes", *GOOD[8:]], "compare must be true or false"),
    "seed in Arabic digits": ([*GOOD[:3], "٣", *GOOD[4:]], "seed must be a whole number"),
    "prompt as a list": ([["Rock"], *GOOD[1:]], "prompt must be text"),
    "prompt as a dict": ([{"a": 1}, *GOOD[1:]], "takes text, numbers and true/false only"),
    "lone surrogate": (["\ud800 rock", *GOOD[1:]], "not valid text"),
    "huge prompt": (["x" * 2000, *GOOD[1:]], "limit is 500"),
    "duration 20 s": ([*GOOD[:2], 20, *GOOD[3:]], "at most 4 s"),
    "duration -3 s": ([*GOOD[:2], -3, *GOOD[3:]], "duration_s must be > 0"),
    "clips 100": (["Rock song.", 100, *GOOD[2:]], "between 1 and 8"),
    "too few values": (GOOD[:3], "generate takes 12 values"),
    "too many values": ([*GOOD, 1], "generate takes 12 values"),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_c_every_malformed_generate_gets_a_readable_error(app, name):
    data, message = MALFORMED[name]
    kind, error = app.call("generate", data)
    assert kind == "error" and isinstance(error, str) and message in error


@pytest.mark.parametrize("api, data, message", [
    ("merge", [None, None], "unknown mode None"),
    ("merge", ["θ_q ↔ θ_d", "0.5"], "λ must be a number"),
    ("new_pair", ["Rock song.", None, None, 2, 1.0], "unknown system None"),
    ("new_pair", ["Rock song.", "base", "merged λ=0.5", 2.5, 1.0], "clips must be a whole number"),
    ("rate", [None, "A", "B"], "make a pair first"),
    ("rate", ["x", ["A"], "B"], "choose A, B or tie"),
])
def test_c_other_endpoints_give_readable_errors(app, api, data, message):
    kind, error = app.call(api, data)
    assert kind == "error" and isinstance(error, str) and message in error


def test_c_an_unknown_endpoint_is_a_404_with_a_reason(app):
    with pytest.raises(urllib.error.HTTPError) as e:
        app.post("/queue/join", {"data": [], "fn_index": 999, "session_hash": "x", "trigger_id": None})
    assert e.value.code == 404 and b"unknown endpoint" in e.value.read()


def test_e_one_limit_for_all_model_running_endpoints(app):
    """Two generations and two blind pairs at once with --concurrency 2: never more than two run together."""
    start = len(app.log_text())
    jobs = [("generate", ["Rock song.", 4, 2.0, str(i), *GOOD[4:]]) for i in range(2)]
    jobs += [("new_pair", ["Rock song.", "base", "merged λ=0.5", 4, 2.0]) for _ in range(2)]
    with ThreadPoolExecutor(4) as pool:
        kinds = [k for k, _ in pool.map(lambda job: app.call(*job), jobs)]
    assert kinds == ["complete"] * 4
    at_once = [int(n) for n in re.findall(r"(\d+) job\(s\) running at its start \(limit 2\)", app.log_text()[start:])]
    assert len(at_once) == 4 and max(at_once) <= 2


def test_i_monitoring_is_off(app):
    for path in ("monitoring", "monitoring/summary"):
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(app.url + path, timeout=10)
        assert e.value.code in (403, 404)
    assert "monitoring" not in app.log_text().replace("(monitoring off)", "")


def test_j_one_log_line_per_rejected_request_and_no_tracebacks(app):
    start = len(app.log_text())
    for data, _ in list(MALFORMED.values())[:5]:
        app.call("generate", data)
    new = app.log_text()[start:]
    assert "Traceback" not in app.log_text()
    assert len(re.findall(r"generate: rejected: ", new)) == 5 and len(new.strip().splitlines()) == 5


def test_g_a_stopped_server_leaves_no_temporary_folder(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "GRADIO_TEMP_DIR"} | {"TMPDIR": str(tmp_path)}
    with running_app(["--ratings-db", str(tmp_path / "r.sqlite")], tmp_path, env) as (url, _, _):
        assert len(list(tmp_path.glob("cfg-distill-*"))) == 2  # its WAV folder and Gradio's private cache
    assert list(tmp_path.glob("cfg-distill-*")) == []  # stopped with SIGTERM: both removed


def test_f2_f3_uploads_are_capped_deep_links_off_and_every_answer_has_security_headers(app):
    """F2: 20 MB to Gradio's upload route is refused (nothing here takes uploads); F3: the deep-link route that saved
    any named session's page answers 404; every answer says nosniff and who may frame the page (Spaces may)."""
    boundary = "probe-boundary"

    def upload(size: int) -> bytes:
        head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"x.bin\"\r\n"
                "Content-Type: application/octet-stream\r\n\r\n").encode()
        return head + b"\0" * size + f"\r\n--{boundary}--\r\n".encode()

    small = urllib.request.Request(app.api + "/upload", upload(4096),
                                   {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with pytest.raises(urllib.error.HTTPError) as e:  # over the 1 KB cap: 413
        urllib.request.urlopen(small, timeout=30)
    assert e.value.code == 413
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"big.bin\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + b"\0" * (20 << 20)
    body += f"\r\n--{boundary}--\r\n".encode()
    kind = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    req = urllib.request.Request(app.api + "/upload", body, kind)
    with pytest.raises(urllib.error.URLError) as e:  # a 4xx, or the connection closed while the body still came
        urllib.request.urlopen(req, timeout=60)
    assert not isinstance(e.value, urllib.error.HTTPError) or 400 <= e.value.code < 500
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"{app.api}/deep_link?session_hash=victim", timeout=10)
    assert e.value.code == 404 and b"deep links are off" in e.value.read()
    with urllib.request.urlopen(app.url, timeout=10) as r:
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert "frame-ancestors" in r.headers["Content-Security-Policy"]
    assert "deep links are off" in app.log_text()


def test_f5_to_f8_gradios_own_paths_answer_404_or_a_readable_error_with_one_log_line(app):
    """F5: Gradio's cancel route (any session's job, by its client-chosen hash) is off; F6: a FileData-shaped input
    naming a server path is a readable error; F7: an unknown API name is a 404; F8: a result stream for an unknown
    session is a 404. None of them leaves a traceback in the log."""
    start = len(app.log_text())
    for path, body in (("/cancel", {"session_hash": "victim", "fn_index": 0, "event_id": "x"}),
                       ("/run/nope", {"data": []}), ("/call/nope", {"data": []})):
        with pytest.raises(urllib.error.HTTPError) as e:
            app.post(path, body)
        assert e.value.code == 404 and b"detail" in e.value.read(), path
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"{app.api}/queue/data?session_hash=nope", timeout=10)
    assert e.value.code == 404
    kind, error = app.call("generate", [{"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}}] + GOOD[1:])
    assert kind == "error" and "takes text, numbers and true/false only" in error
    new = app.log_text()[start:]
    assert "Traceback" not in new and len(new.strip().splitlines()) == 5, new


def test_f4_another_client_cannot_stop_a_browsers_job_even_with_its_session_hash(app):
    """Stop is keyed by the browser's HttpOnly client cookie (set with the page) as well as the session hash: a client
    that learns the hash but not the cookie stops nothing; the browser's own Stop still works."""
    with urllib.request.urlopen(app.url, timeout=10) as r:
        cookie = r.headers["Set-Cookie"].split(";")[0]
    assert cookie.startswith("cfgd_client=") and "HttpOnly" in r.headers["Set-Cookie"]
    long = ["Rock song.", 8, 4.0, "3", 1.0, "q-d", 0.5, True, 3.0, "", 0.0, 0.0]
    event = app.submit("generate", long, session="victim", cookie=cookie)
    app.post("/run/stop", {"data": [], "session_hash": "victim"})  # the attacker: the hash, no cookie
    kind, _ = app.result("generate", event)
    assert kind == "complete"
    event = app.submit("generate", long, session="victim", cookie=cookie)
    app.post("/run/stop", {"data": [], "session_hash": "victim"}, cookie=cookie)  # the browser itself
    kind, error = app.result("generate", event)
    assert kind == "error" and "Stopped" in error


def test_one_client_has_a_share_of_the_queue_and_no_route_around_it(app):
    """Observation of issue 26: one client took every place in the queue. With the default share (4 requests waiting
    or running per address), a fifth is refused with 429 and a reason, the four finish, and then the client may
    join again. /run/generate (which skipped the queue and its limits) is closed to model-running endpoints."""
    long = ["Rock song.", 8, 4.0, "3", 1.0, "q-d", 0.5, True, 3.0, "", 0.0, 0.0]
    start = len(app.log_text())
    events = [app.submit("generate", long, session=f"tab {i}") for i in range(4)]
    with pytest.raises(urllib.error.HTTPError) as e:
        app.submit("generate", long, session="tab 5")
    assert e.value.code == 429 and b"at most 4 each" in e.value.read()
    assert app.call("generate", GOOD, client="10.9.9.9")[0] == "complete"  # another client is served meanwhile
    assert [app.result("generate", ev)[0] for ev in events] == ["complete"] * 4
    assert app.call("generate", GOOD)[0] == "complete"  # the share is free again
    with pytest.raises(urllib.error.HTTPError) as e:
        app.post("/run/generate", {"data": GOOD})
    assert e.value.code == 404
    assert "Traceback" not in app.log_text()[start:]


def test_an_agent_lists_the_tools_over_mcp_and_makes_a_take(app):
    """--mcp: the generate endpoint is an MCP tool with its parameters described; a call makes a take whose WAV the
    agent can download, through the same queue as the page."""
    import asyncio  # noqa: PLC0415

    from mcp import ClientSession  # noqa: PLC0415
    from mcp.client.streamable_http import streamablehttp_client  # noqa: PLC0415

    async def session():
        async with streamablehttp_client(app.api + "/mcp/") as (read, write, _), ClientSession(read, write) as mcp:
            await mcp.initialize()
            tools = {t.name: t for t in (await mcp.list_tools()).tools}
            made = await mcp.call_tool("generate", {"prompt": "calm piano", "num_clips": 1, "duration": 1.0,
                                                    "seed": "7", "lam": 0.3})
            return tools, made

    tools, made = asyncio.run(session())
    assert {"generate", "stop", "make_pair", "rate"} <= set(tools)
    schema = tools["generate"].inputSchema["properties"]
    assert "blend" in schema["lam"]["description"] and schema["num_clips"]["default"] == 4
    assert not made.isError
    text = " ".join(getattr(c, "text", "") for c in made.content)
    assert "λ=0.30" in text
    wav = re.search(r"http://[^'\"\s]+calm-piano_1s_seed7_[^'\"\s]+\.wav", text)
    assert wav, text[:500]
    with urllib.request.urlopen(wav.group(0), timeout=30) as answer:
        assert answer.read(4) == b"RIFF"
