"""Security headers on every HTTP response of the front.

The page starts tools with the caller's cookie, so it must not be framed by another site (clickjacking:
``frame-ancestors 'none'``, and ``X-Frame-Options`` for older browsers) and runs only its own scripts and styles
(a Content-Security-Policy that allows nothing inline, nothing from elsewhere; its WebSocket is same-origin, which
``connect-src 'self'`` covers). Responses are never sniffed into another type, and no URL leaks in a Referer.
Starlette has no such middleware; these few lines are an ASGI wrapper.
"""

from __future__ import annotations

from typing import Any

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]


class SecurityHeaders:
    """ASGI middleware: adds :data:`HEADERS` to every HTTP response (WebSocket handshakes pass through)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)
