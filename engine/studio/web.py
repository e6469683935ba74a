"""What the web server adds to every answer and refuses outright, as one plain ASGI middleware (no framework import).

- Deep links are off: Gradio's `/gradio_api/deep_link?session_hash=…` saves any session's page (prompt, seed, clip
  addresses) for anyone who names the session, and each snapshot costs disk; the app needs none, so it answers 404.
- Security headers on every HTTP answer: no MIME sniffing, no referrer to other sites, and framing only by the page's
  own origin and Hugging Face (Spaces shows the app in an iframe; X-Frame-Options cannot allow that, CSP can).
"""
from __future__ import annotations

import json
import logging

LOG = logging.getLogger("cfg_distill.app")
REFUSED_PATHS = ("/gradio_api/deep_link",)
HEADERS = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"same-origin"),
           (b"content-security-policy", b"frame-ancestors 'self' https://huggingface.co https://*.hf.space")]


class GuardMiddleware:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if scope["path"].rstrip("/") in REFUSED_PATHS:
            LOG.info("%s: rejected: deep links are off on this server", scope["path"])
            body = json.dumps({"detail": "deep links are off on this server"}).encode()
            await send({"type": "http.response.start", "status": 404,
                        "headers": [(b"content-type", b"application/json"), *HEADERS]})
            return await send({"type": "http.response.body", "body": body})

        async def with_headers(message):
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [h for h in HEADERS if h[0] not in names]
            await send(message)

        return await self.app(scope, receive, with_headers)
