"""`retriever serve` against hostile or careless clients: each row of the table in
docs/guide.md ("What a client cannot do"), on a real server over raw sockets."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")

from retriever.core.errors import RetrieverError  # noqa: E402
from retriever.serve.app import create_app, read_api_key, serve  # noqa: E402
from retriever.serve.guard import default_allowed_hosts, host_of, is_loopback  # noqa: E402
from retriever.serve.schemas import Limits  # noqa: E402
from retriever.serve.server import ConnectionLimits, bind, make_server  # noqa: E402
from tests.conftest import TOY_DOCS, synthetic_docs  # noqa: E402
from tests.test_server import Running, _build, call  # noqa: E402

KEY = "hostile-test-key"
LIMITS = Limits(max_body_bytes=64 << 10, max_query_chars=200)
CONNECTIONS = ConnectionLimits(
    max_connections=6, header_timeout_s=0.5, keep_alive_s=0.5, max_request_head_bytes=8 << 10
)


@pytest.fixture(scope="module")
def index(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    docs = TOY_DOCS + synthetic_docs(10, seed=6)
    return _build(tiny_model, docs, tmp_path_factory.mktemp("hostile") / "index")


@pytest.fixture(scope="module")
def server(index: Path) -> Iterator[Running]:
    app = create_app(index, api_key=KEY, limits=LIMITS, allowed_hosts={"127.0.0.1", "localhost"})
    running = Running(app, bounded=CONNECTIONS)
    yield running
    running.stop()


def _answer(connection: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP answer read off a raw socket: status, headers, body (until close or length)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    pairs = [line.split(": ", 1) for line in lines[1:] if ": " in line]
    headers = {name.lower(): value for name, value in pairs}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = connection.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body


def _request(server: Running, head: str) -> tuple[int, dict[str, str], bytes]:
    with server.connect() as connection:
        connection.sendall(head.encode("latin-1"))
        return _answer(connection)


def _get(path: str, host: str = "127.0.0.1", key: str = KEY) -> str:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {key}\r\nConnection: close\r\n\r\n"


def test_a_chunked_body_is_cut_off_at_the_limit(server: Running) -> None:
    """No Content-Length: the bytes are counted as they come and the answer is a 413
    after a little over the limit, while the client would send 50 MB."""
    with server.connect() as connection:
        connection.sendall(
            b"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: " + KEY.encode() + b"\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"x" * 16384
        sent = 0
        connection.settimeout(10)
        for _ in range(8):  # 128 KiB, twice the limit; then the answer, no more sent
            connection.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += len(chunk)
        status, headers, body = _answer(connection)
    assert status == 413 and headers["content-type"] == "application/json"
    assert json.loads(body)["error"] == (
        "the request body goes on; this server takes at most 65,536"
    )


def test_a_declared_body_over_the_limit_is_refused_before_it_is_read(server: Running) -> None:
    status, _, body = _request(
        server,
        "POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: " + KEY + "\r\n"
        "Content-Length: 50000000\r\n\r\n",
    )
    assert status == 413 and "is 50,000,000 bytes" in json.loads(body)["error"]


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/documents/", "empty document id: give the id of a stored document"),
        ("/documents/%00", "empty document id: give the id of a stored document"),
        ("/lens?doc_id=", "empty document id: give the id of a stored document"),
        ("/lens?text=%E2%80%8B%E2%80%8B", "empty text: give some text to look at"),
        ("/search?query=%00%00%00", "empty query: it holds only control, formatting or blank"),
        ("/search?query=%E2%80%8B", "empty query: it holds only control, formatting or blank"),
    ],
)
def test_empty_and_invisible_ids_and_queries_are_one_line(
    server: Running, path: str, message: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        status, _, body = _request(server, _get(path))
    assert status == 400 and json.loads(body)["error"].startswith(message)
    assert "Traceback" not in caplog.text and "internal error" not in caplog.text


def test_an_idle_or_slow_connection_is_let_go(server: Running) -> None:
    with server.connect() as idle, server.connect() as slow:
        slow.sendall(b"GET /health HTTP/1.1\r\nHo")  # a head that never ends
        started = time.monotonic()
        assert idle.recv(10) == b"" and slow.recv(10) == b""  # closed by the server
        assert time.monotonic() - started < 5


def test_connections_past_the_limit_get_a_503_and_are_closed(server: Running) -> None:
    held = [server.connect() for _ in range(CONNECTIONS.max_connections)]
    try:
        time.sleep(0.1)
        with server.connect() as extra:
            status, headers, body = _answer(extra)
            assert status == 503 and headers["content-type"] == "application/json"
            assert json.loads(body)["error"] == "too many connections; try again shortly"
    finally:
        for connection in held:
            connection.close()
    time.sleep(0.2)
    assert call(server.url, "/health")[0] == 200  # the slots come back


def test_an_overlong_url_is_a_json_error(server: Running) -> None:
    path = "/search?" + urllib.parse.urlencode({"query": "x" * 20000})
    # Arriving whole, it reaches the API, which measures the query.
    status, headers, body = _request(server, _get(path))
    assert status == 413 and headers["content-type"] == "application/json"
    assert json.loads(body)["error"].startswith("the query is 20,000 characters long")
    # Arriving in pieces, the head outgrows the buffer first: refused below the API, in
    # the same JSON shape.
    with server.connect() as connection:
        connection.sendall(f"GET {path}".encode())
        time.sleep(0.1)
        connection.sendall(b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        status, headers, body = _answer(connection)
    assert status == 400 and headers["content-type"] == "application/json"
    assert "longer than 8,192 bytes" in json.loads(body)["error"]


def test_an_unparseable_body_is_a_json_error(server: Running) -> None:
    status, body = call(server.url, "/search", b"{not json", headers={"X-API-Key": KEY})
    assert (status, body) == (422, {"error": "bad request: the body is not valid JSON"})


def test_a_foreign_host_is_refused_and_answers_carry_security_headers(server: Running) -> None:
    status, _, body = _request(server, _get("/health", host="rebound.example:8080"))
    assert status == 400
    assert json.loads(body)["error"] == "this server does not answer for the host 'rebound.example'"
    status, headers, _ = _request(server, _get("/health", host=f"localhost:{server.port}"))
    assert status == 200
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["x-frame-options"] == "DENY"
    assert "default-src 'self'" in headers["content-security-policy"]
    assert host_of("[::1]:8080") == "::1" and host_of("LocalHost") == "localhost"


def test_keys_are_ascii_and_compared_as_bytes(server: Running, tmp_path: Path) -> None:
    (tmp_path / "key").write_text("clé-secrète\n", encoding="utf-8")
    with pytest.raises(RetrieverError, match="must be printable ASCII"):
        read_api_key(tmp_path / "key")
    # A header of Latin-1 bytes is compared, not crashed on.
    status, _, _ = _request(server, _get("/info", key="cl\xe9"))
    assert status == 401
    assert _request(server, _get("/info"))[0] == 200


def test_the_docs_work_offline_and_with_a_key(server: Running) -> None:
    status, headers, page = _request(server, _get("/docs", key=""))
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b"/docs-assets/swagger-ui-bundle.js" in page and b"//" not in page
    status, headers, script = _request(server, _get("/docs-assets/swagger-ui-bundle.js", key=""))
    assert status == 200 and "javascript" in headers["content-type"] and len(script) > 100_000
    status, _, schema = _request(server, _get("/openapi.json", key=""))
    declared = json.loads(schema)
    assert status == 200 and declared["components"]["securitySchemes"]["apiKey"] == {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
    }


def test_without_swagger_the_api_serves_and_docs_says_why(
    index: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "swagger_ui_bundle", None)
    running = Running(create_app(index))
    try:
        assert call(running.url, "/search?query=fox")[0] == 200
        assert call(running.url, "/docs") == (
            501,
            {"error": "the API docs need swagger-ui-bundle-v2: pip install 'retriever[serve]'"},
        )
    finally:
        running.stop()


def test_binding_beyond_loopback_without_a_key_warns(
    index: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")
    assert "localhost" in default_allowed_hosts("0.0.0.0")
    assert default_allowed_hosts("10.0.0.5") >= {"10.0.0.5", "localhost", "127.0.0.1"}
    taken = bind("0.0.0.0", 0)
    try:
        with caplog.at_level(logging.WARNING), pytest.raises(RetrieverError, match="in use"):
            serve(index, "0.0.0.0", taken.getsockname()[1])
    finally:
        taken.close()
    assert "without --api-key-file: anyone who can reach this machine" in caplog.text


# --- the command, as a process ---------------------------------------------------------------


def _serve_process(index: Path, port: int, *extra: str) -> subprocess.Popen:
    root = Path(__file__).resolve().parents[1]
    argv = [sys.executable, "-m", "retriever.cli", "serve", str(index), "--port", str(port)]
    return subprocess.Popen(
        [*argv, *extra],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def test_a_port_in_use_is_refused_before_the_model_loads(index: Path) -> None:
    taken = bind("127.0.0.1", 0)
    port = taken.getsockname()[1]
    try:
        process = _serve_process(index, port)
        _, errors = process.communicate(timeout=120)
    finally:
        taken.close()
    assert process.returncode == 2
    lines = [line for line in errors.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].endswith(
        f"port {port} on 127.0.0.1 is already in use: stop what holds it or "
        "pick another with --port"
    ), errors
    assert "loading" not in errors


def test_sigterm_stops_the_server_and_it_exits_0(index: Path) -> None:
    probe = bind("127.0.0.1", 0)
    port = probe.getsockname()[1]
    probe.close()
    process = _serve_process(index, port, "--shutdown-timeout", "3")
    try:
        deadline = time.monotonic() + 120
        while call(f"http://127.0.0.1:{port}", "/health")[0] != 200:
            assert process.poll() is None, process.communicate()[1]
            assert time.monotonic() < deadline
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        _, errors = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0, errors
    assert "stopped serving" in errors


def test_a_stop_with_a_batch_in_flight_ends_it_in_time(index: Path) -> None:
    """SIGTERM (here its handler, called directly) while a 64-query batch runs slice by
    slice: queued work is refused with a JSON 503 after the deadline less one second, the
    server ends within the deadline, and a search sent before the stop is answered."""
    from retriever.serve.app import _stop_later

    app = create_app(index, batch_queries=4)
    searcher = app.state.service.following.searcher
    plain = searcher.encoder.encode_queries

    def slow(texts: list[str], **options: Any) -> Any:
        time.sleep(0.2)
        return plain(texts, **options)

    searcher.encoder.encode_queries = slow
    batcher = app.state.service.batcher
    listener = bind("127.0.0.1", 0)
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    server = make_server(
        app, limits=CONNECTIONS, shutdown_timeout_s=2, on_stop=lambda: _stop_later(batcher, 1)
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    while call(url, "/health")[0] != 200:
        time.sleep(0.05)
    answers: dict[str, Any] = {}
    queries = {f"q{i}": f"query number {i}" for i in range(64)}
    sender = threading.Thread(
        target=lambda: answers.update(batch=call(url, "/batch_search", {"queries": queries}))
    )
    sender.start()
    time.sleep(0.5)
    single = threading.Thread(target=lambda: answers.update(single=call(url, "/search?query=fox")))
    single.start()
    time.sleep(0.1)
    stopped = time.monotonic()
    server.handle_exit(signal.SIGTERM, None)
    thread.join(timeout=10)
    sender.join(timeout=10)
    single.join(timeout=10)
    assert not thread.is_alive() and time.monotonic() - stopped < 4
    assert answers["single"][0] == 200
    assert answers["batch"] == (503, {"error": "the server is shutting down; try again later"})
