"""What every request passes before an endpoint sees it (a plain ASGI middleware).

In order: the ``Host`` header must name an allowed host (a page on another site that
rebinds its DNS name to this address cannot read a local server); the API key, where one
is set; a declared body over the limit is refused at once, and an undeclared (chunked)
one is counted as it arrives and refused when it passes the limit, without reading on.
Every answer carries the security headers below.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import socket
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# The page, the API docs and their files: none holds data, so none needs the key (the
# page and /docs send the key, typed into them, with each API call).
OPEN_PATHS = frozenset({"/health", "/", "/docs", "/openapi.json", "/favicon.ico"})
OPEN_PREFIXES = ("/static/", "/docs-assets/")
LOCAL_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    # Swagger UI sets inline style attributes and draws icons from data: URLs; no script
    # runs unless it comes from this server.
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
        b"object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    ),
]
KEY_HELP = "missing or wrong API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'"


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server to this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def default_allowed_hosts(host: str) -> frozenset[str]:
    """The bound address and this machine's local names; for a wildcard address
    (``0.0.0.0``, ``::``), also the machine's host names and their addresses."""
    names = set(LOCAL_NAMES) | {host.strip("[]").lower()}
    if host in ("0.0.0.0", "::", ""):
        names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
        try:
            names |= {info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None)}
        except OSError:
            pass  # no resolvable host name: the local names remain
    return frozenset(names)


def host_of(header: str) -> str:
    """A ``Host`` header's name without its port (``[::1]:8080`` gives ``::1``)."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class Guard:
    """The ASGI middleware: see the module docstring. ``allowed_hosts`` None: any host."""

    def __init__(
        self,
        app: Callable[..., Awaitable[None]],
        *,
        api_key: str | None,
        allowed_hosts: Iterable[str] | None,
        max_body_bytes: int,
    ) -> None:
        self.app = app
        self.api_key = api_key
        self.allowed = None if allowed_hosts is None else frozenset(map(str.lower, allowed_hosts))
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = _with_headers(send)
        refusal = self._refusal(scope, Headers(scope=scope))
        if refusal is not None:
            status, message, extra = refusal
            await send_json(send, status, {"error": message}, extra)
            return
        await self.app(scope, self._counted(receive), send)

    def _refusal(self, scope: Scope, headers: Headers) -> tuple[int, str, list] | None:
        host = headers.get("host")
        if self.allowed is not None and host is not None and host_of(host) not in self.allowed:
            return 400, f"this server does not answer for the host {host_of(host)!r}", []
        path = scope["path"]
        if self.api_key is not None and path not in OPEN_PATHS:
            if not path.startswith(OPEN_PREFIXES) and not key_matches(headers, self.api_key):
                return 401, KEY_HELP, [(b"www-authenticate", b"Bearer")]
        size = headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > self.max_body_bytes:
            return 413, self._too_big(int(size)), []
        return None

    def _too_big(self, size: int | None) -> str:
        said = f"is {size:,} bytes" if size is not None else "goes on"
        return f"the request body {said}; this server takes at most {self.max_body_bytes:,}"

    def _counted(self, receive: Receive) -> Receive:
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body_bytes:
                    # FastAPI lets an HTTPException from the body through as it is.
                    raise HTTPException(413, self._too_big(None))
            return message

        return counted


def key_matches(headers: Headers, api_key: str) -> bool:
    """Whether the request carries ``api_key`` (ASCII, see ``read_api_key``)."""
    given = headers.get("x-api-key")
    authorization = headers.get("authorization", "")
    if given is None and authorization[:7].lower() == "bearer ":
        given = authorization[7:].strip()
    if given is None:
        return False
    # Header values arrive as Latin-1 text: back to their bytes, then compared in constant
    # time (a timing side channel leaks nothing of the key).
    return hmac.compare_digest(given.encode("latin-1"), api_key.encode("ascii"))


def _with_headers(send: Send) -> Send:
    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            present = {name.lower() for name, _ in message.get("headers", [])}
            extra = [(n, v) for n, v in SECURITY_HEADERS if n not in present]
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)

    return sending


async def send_json(send: Send, status: int, body: dict, headers: list | None = None) -> None:
    """A whole JSON answer, for the layers below FastAPI's own responses."""
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})
