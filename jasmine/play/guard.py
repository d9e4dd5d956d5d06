"""Who may use ``jasmine play``: only the pages it serves itself.

A web page the user visits can open ``ws://127.0.0.1:PORT/ws`` from its own origin, and with DNS rebinding reach the
HTTP routes under its own host name. :class:`Guard` (ASGI middleware) therefore refuses:

- a request whose ``Host`` is not one the server answers to (loopback names, the ``--host`` given): DNS rebinding;
- a WebSocket whose ``Origin`` is present and is not the server's own (browsers always send it; other clients cannot
  be driven by a web page);
- when the server listens beyond loopback, a WebSocket without the server's random token (``?token=``, printed in the
  URL, as Jupyter does).

Every HTTP response carries a Content-Security-Policy (same-origin scripts, no framing) and ``nosniff``.
"""

from __future__ import annotations

import hmac
import ipaddress
from urllib.parse import parse_qs, urlsplit

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
CSP = ("default-src 'self'; img-src 'self' data: blob:; connect-src 'self'; script-src 'self'; style-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")  # fmt: skip


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def _hostname(netloc: str) -> str:
    """``example.org`` of ``example.org:80``, ``::1`` of ``[::1]:80``."""
    return (urlsplit("//" + netloc).hostname or "").lower()


class Guard:
    """ASGI middleware around the play app; ``token`` is required on ``/ws`` when given."""

    def __init__(self, app, host: str, token: str | None = None):
        self.app, self.token = app, token
        self.hosts = {h.lower() for h in LOOPBACK_NAMES} | {host.strip("[]").lower()}
        self.any_host = not is_loopback(host)  # bound beyond loopback: the token, not the name, decides

    def _refusal(self, scope) -> str | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host = headers.get("host", "")
        if not self.any_host and _hostname(host) not in self.hosts:
            return f"unknown Host {host[:80]!r}"
        if scope["type"] == "websocket":
            origin = headers.get("origin")
            if origin is not None and urlsplit(origin).netloc.lower() != host.lower():
                return f"cross-origin WebSocket from {origin[:80]!r}"
            if self.token is not None:
                given = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", [""])[0]
                if not hmac.compare_digest(given.encode(), self.token.encode()):
                    return "missing or wrong token"
        return None

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        why = self._refusal(scope)
        if why is not None:
            if scope["type"] == "websocket":  # closing before accepting answers the handshake with 403
                return await send({"type": "websocket.close", "code": 1008, "reason": why})
            body = f"refused: {why}\n".encode()
            head = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": 403, "headers": head})
            return await send({"type": "http.response.body", "body": body})

        extra = [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
                 (b"referrer-policy", b"no-referrer")]  # fmt: skip

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        return await self.app(scope, receive, send_with_headers)
