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
- Security headers on every HTTP answer: no MIME sniffing, no referrer to other sites, and framing only by the page's
  own origin and Hugging Face (Spaces shows the app in an iframe; X-Frame-Options cannot allow that, CSP can).
"""
from __future__ import annotations

import json
import logging
import secrets
from urllib.parse import parse_qs

LOG = logging.getLogger("cfg_distill.app")
REFUSED_PATHS = {"/gradio_api/deep_link": "deep links are off on this server",
                 "/gradio_api/cancel": "cancelling through Gradio is off on this server: press Stop (/stop)"}
STREAM_PATH = "/gradio_api/queue/data"
CLIENT_COOKIE = "cfgd_client"
PAGE_PATHS = ("", "/")  # where a browser starts: the page itself
HEADERS = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"same-origin"),
           (b"content-security-policy", b"frame-ancestors 'self' https://huggingface.co https://*.hf.space")]


class GuardMiddleware:
    def __init__(self, app, sessions=lambda: ()):
        """`sessions`: the session hashes the server's queue has results for (the stream check)."""
        self.app, self.sessions = app, sessions

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
            LOG.info("%s: rejected: %s", scope["path"], reason)
            await send({"type": "http.response.start", "status": 404,
                        "headers": [(b"content-type", b"application/json"), *HEADERS]})
            return await send({"type": "http.response.body", "body": json.dumps({"detail": reason}).encode()})

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
