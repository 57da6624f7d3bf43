"""uvicorn, bounded: the socket bound before the model loads, a connection limit, a time
limit on a request's headers, JSON for the errors uvicorn answers itself, and a stop with
a deadline.

uvicorn times out an idle keep-alive connection, but not a connection that never sends a
request, nor one that sends its headers a byte at a time; and it answers a malformed or
too-long request line in plain text. The protocol below adds the first two and answers in
the API's JSON shape.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from retriever.core.errors import RetrieverError

logger = logging.getLogger("retriever")


@dataclass(frozen=True)
class ConnectionLimits:
    """What one client's connection may hold."""

    max_connections: int = 256
    header_timeout_s: float = 10.0
    keep_alive_s: float = 5.0
    max_request_head_bytes: int = 64 << 10


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``, or a one-line refusal (before any model loads)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise RetrieverError(f"cannot serve on {host!r}: {exc.strerror}") from None
    listener = socket.socket(family, kind, proto)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(address)
        listener.listen(2048)
    except OSError as exc:
        listener.close()
        if exc.errno == errno.EADDRINUSE:
            raise RetrieverError(
                f"port {port} on {host} is already in use: stop what holds it or pick "
                "another with --port"
            ) from None
        raise RetrieverError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return listener


def _raw_answer(status: int, reason: str, message: str) -> bytes:
    """A whole HTTP/1.1 answer in the API's JSON shape, written below h11 (which will not
    send a response before a request has arrived)."""
    body = json.dumps({"error": message}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class BoundedProtocol(H11Protocol):
    """uvicorn's h11 protocol with the limits of :class:`ConnectionLimits`."""

    limits = ConnectionLimits()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
        if len(self.connections) > self.limits.max_connections:
            self._answer(503, "Service Unavailable", "too many connections; try again shortly")
            return
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.IDLE:  # still waiting for a whole request head
            self._arm_header_timer()
        elif self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        if self._header_timer is None and not self.transport.is_closing():
            self._header_timer = self.loop.call_later(
                self.limits.header_timeout_s, self._headers_too_slow
            )

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE:  # no whole request head in time: let go
            self.transport.close()

    def send_400_response(self, msg: str) -> None:
        self._answer(
            400,
            "Bad Request",
            "bad request: a malformed request line or headers, or a head (the URL and "
            f"headers) longer than {self.limits.max_request_head_bytes:,} bytes",
        )

    def _answer(self, status: int, reason: str, message: str) -> None:
        self.transport.write(_raw_answer(status, reason, message))
        self.transport.close()


def protocol_with(limits: ConnectionLimits) -> type[BoundedProtocol]:
    return type("Protocol", (BoundedProtocol,), {"limits": limits})


class StoppingServer(uvicorn.Server):
    """A uvicorn server that calls ``on_stop`` at SIGINT or SIGTERM, then stops as uvicorn
    does (new connections refused, requests under way given ``timeout_graceful_shutdown``
    seconds) and returns, instead of raising the signal again once stopped."""

    def __init__(self, config: uvicorn.Config, on_stop: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_stop = on_stop
        self._stop_called = threading.Event()

    def handle_exit(self, sig: int, frame: Any) -> None:
        if not self._stop_called.is_set():
            self._stop_called.set()
            self._on_stop()
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        signals = (signal.SIGINT, signal.SIGTERM)
        before = {sig: signal.signal(sig, self.handle_exit) for sig in signals}
        try:
            yield
        finally:
            for sig, handler in before.items():
                signal.signal(sig, handler)


def make_server(
    app: Any,
    *,
    limits: ConnectionLimits,
    shutdown_timeout_s: float,
    on_stop: Callable[[], None],
) -> StoppingServer:
    """The uvicorn server for ``app``; ``.run(sockets=[listener])`` serves until SIGINT or
    SIGTERM."""
    config = uvicorn.Config(
        app,
        http=protocol_with(limits),
        log_level="warning",
        access_log=False,
        timeout_keep_alive=limits.keep_alive_s,
        timeout_graceful_shutdown=shutdown_timeout_s,
        h11_max_incomplete_event_size=limits.max_request_head_bytes,
        lifespan="on",
    )
    return StoppingServer(config, on_stop)
