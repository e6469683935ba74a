"""What the web server adds to every answer and refuses outright, as one plain ASGI middleware (no framework import).

- Deep links are off: Gradio's `/gradio_api/deep_link?session_hash=…` saves any session's page (prompt, seed, clip
  addresses) for anyone who names the session, and each snapshot costs disk; the app needs none, so it answers 404.
- Gradio's cancel route is off: it cancelled any job whose session hash (chosen by the client) and event id were
  named, leaving that user without an answer; the app's own Stop does the job (`engine.studio.core.StopSignal`).
- A result stream for a session the server does not have answers 404 at once (Gradio found out after starting the
  stream, and logged a traceback).
- Every browser gets a random, HttpOnly client cookie with the page (`CLIENT_COOKIE`); the app keys a session's Stop
  by it as well as by Gradio's session hash (which the client chooses, and Gradio streams a session's outputs to
  whoever names it), so another client that learns the hash still cannot stop the job (`client_key`).
- Each client (its network address, `ClientAddress`) has a share of the queue: a request to join it while that
  address already has `share` jobs queued or running answers 429 with a reason (Gradio's own `max_size` let one client
  take every place). Clients behind one NAT share one share.
- Security headers on every HTTP answer: no MIME sniffing, no referrer to other sites, and framing only by the page's
  own origin and Hugging Face (Spaces shows the app in an iframe; X-Frame-Options cannot allow that, CSP can).
"""
from __future__ import annotations

import json
import logging
import secrets
from dataclasses import dataclass
from urllib.parse import parse_qs

LOG = logging.getLogger("cfg_distill.app")
REFUSED_PATHS = {"/gradio_api/deep_link": "deep links are off on this server",
                 "/gradio_api/cancel": "cancelling through Gradio is off on this server: press Stop (/stop)"}
STREAM_PATH = "/gradio_api/queue/data"
JOIN_PATHS = ("/gradio_api/queue/join", "/gradio_api/call/")  # every way into Gradio's queue (`call/v2/…` included)
CLIENT_COOKIE = "cfgd_client"
PAGE_PATHS = ("", "/")  # where a browser starts: the page itself
HEADERS = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"same-origin"),
           (b"content-security-policy", b"frame-ancestors 'self' https://huggingface.co https://*.hf.space")]


@dataclass(frozen=True)
class ClientAddress:
    """Which network address a request comes from, the key of its queue share and vote allowance.

    `proxy_hops` = 0: the address that connected (uvicorn already replaces it by X-Forwarded-For's for loopback peers,
    its FORWARDED_ALLOW_IPS default). n > 0: the app sits behind n proxies of its own (Spaces: 1), each appending the
    address it saw to X-Forwarded-For, so the n-th entry from the right is the client's; entries further left are
    whatever the client wrote and are never trusted."""

    proxy_hops: int = 0

    def of(self, headers, peer: str) -> str:
        if self.proxy_hops:
            seen = [h.strip() for h in (headers.get("x-forwarded-for") or "").split(",") if h.strip()]
            if len(seen) >= self.proxy_hops:
                return seen[-self.proxy_hops]
        return peer

    def of_scope(self, scope) -> str:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        return self.of(headers, str((scope.get("client") or ("", 0))[0]))

    def of_request(self, request) -> str:
        """Of a Starlette or Gradio request (both have `headers` and `client.host`)."""
        peer = str(getattr(getattr(request, "client", None), "host", "") or "")
        return self.of(getattr(request, "headers", None) or {}, peer)


class GuardMiddleware:
    def __init__(self, app, sessions=lambda: (), in_flight=lambda address: 0, share: int | None = None,
                 addresses: ClientAddress = ClientAddress()):  # noqa: B008 (frozen: one shared default is fine)
        """`sessions`: the session hashes the server's queue has results for (the stream check); `in_flight(address)`:
        the jobs the queue holds (waiting or running) for a client address; `share`: the most one address may hold
        (None: no share); `addresses`: how a request's address is read."""
        self.app, self.sessions, self.in_flight, self.share = app, sessions, in_flight, share
        self.addresses = addresses
        self._joining: dict[str, int] = {}  # joins let through and not yet in the queue, per address

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"].rstrip("/")
        reason = REFUSED_PATHS.get(path)
        if reason is None and path == STREAM_PATH:
            query = parse_qs(scope.get("query_string", b"").decode(errors="replace"))
            if query.get("session_hash", [""])[0] not in self.sessions():
                reason = "unknown session: nothing is waiting for it"
        if reason is not None:
            return await _refuse(send, scope["path"], 404, reason)
        if scope.get("method") == "POST" and path.startswith(JOIN_PATHS) and self.share is not None:
            return await self._join(scope, receive, send)
        return await self._serve(scope, receive, send, path)

    async def _join(self, scope, receive, send):
        """A request to join the queue, within its client's share. Counting the joins under way as well as the
        queue's own jobs keeps a burst of simultaneous joins from slipping past the count."""
        address = self.addresses.of_scope(scope)
        held = self.in_flight(address) + self._joining.get(address, 0)
        if held >= self.share:
            return await _refuse(send, scope["path"], 429, f"this client already has {held} requests waiting or "
                                 f"running (at most {self.share} each): wait for one to finish")
        self._joining[address] = self._joining.get(address, 0) + 1
        try:
            return await self._serve(scope, receive, send, scope["path"].rstrip("/"))
        finally:
            self._joining[address] -= 1
            if not self._joining[address]:
                del self._joining[address]

    async def _serve(self, scope, receive, send, path):
        extra = list(HEADERS)
        if path in PAGE_PATHS and not _cookie(scope, CLIENT_COOKIE):
            extra.append((b"set-cookie", f"{CLIENT_COOKIE}={secrets.token_urlsafe(16)}; Path=/; HttpOnly; "
                                         "SameSite=Lax".encode()))

        async def with_headers(message):
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [h for h in extra if h[0] not in names
                                                                         or h[0] == b"set-cookie"]
            await send(message)

        return await self.app(scope, receive, with_headers)


async def _refuse(send, path: str, status: int, reason: str):
    LOG.info("%s: rejected: %s", path, reason)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), *HEADERS]})
    await send({"type": "http.response.body", "body": json.dumps({"detail": reason}).encode()})


def jobs_of(demo, address: str, addresses: ClientAddress) -> int:
    """How many jobs Gradio's queue holds (waiting or running) for a client address (its own bookkeeping: an event
    leaves `event_ids_to_events` when it ends)."""
    queue = getattr(demo, "_queue", None)
    events = list((getattr(queue, "event_ids_to_events", None) or {}).values())
    return sum(1 for e in events if addresses.of_request(e.request) == address)


def waiting(demo) -> set:
    """The sessions Gradio's queue holds results for (its own bookkeeping: `GuardMiddleware` asks it)."""
    queue = getattr(demo, "_queue", None)
    return set(getattr(queue, "pending_messages_per_session", {}) or ())


def unknown_key(request, exc: Exception):
    """A request naming an endpoint (fn_index or API name) or session the server does not have: 404 with a reason,
    one log line (Gradio lets the error through as a bare 500 with a traceback)."""
    from fastapi.responses import JSONResponse  # noqa: PLC0415 (a Gradio dependency; only the server needs it)

    LOG.info("%s: rejected: unknown key %s", request.url.path, exc)
    return JSONResponse({"detail": f"unknown endpoint or session: {exc}"}, status_code=404)


def _cookie(scope, name: str) -> str:
    for key, value in scope.get("headers", []):
        if key == b"cookie":
            for part in value.decode(errors="replace").split(";"):
                k, _, v = part.strip().partition("=")
                if k == name:
                    return v
    return ""


def client_key(session_hash: str, cookies) -> str:
    """A session's key for Stop: the browser's client cookie (none for API clients) with Gradio's session hash.
    `cookies`: a mapping, or Gradio's object view of one (`dict()` turns either into a dict)."""
    try:
        client = dict(cookies or {}).get(CLIENT_COOKIE, "")
    except (TypeError, ValueError):
        client = ""
    return f"{client}|{session_hash}"
