"""The HTTP API (`retriever serve`): a real uvicorn server on a free port, real HTTP."""

from __future__ import annotations

import argparse
import json
import logging
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

from retriever import Searcher, build_index  # noqa: E402
from retriever.cli import main  # noqa: E402
from retriever.cli import serve as serve_command  # noqa: E402
from retriever.core.errors import RetrieverError  # noqa: E402
from retriever.core.generations import current_generation  # noqa: E402
from retriever.core.spec import IndexSpec, ModelSpec  # noqa: E402
from retriever.index.changes import delete_documents  # noqa: E402
from retriever.serve.app import create_app  # noqa: E402
from retriever.serve.schemas import Limits  # noqa: E402
from retriever.serve.server import ConnectionLimits, make_server  # noqa: E402
from tests.conftest import TOY_DOCS, synthetic_docs, write_jsonl  # noqa: E402

LIMITS = Limits(max_k=50, max_query_chars=200, max_batch=4, max_body_bytes=64 << 10)
QUERIES = [
    "vitamin D and bone",
    "the quick brown fox",
    "dense retrieval vectors",
    "protein folding",
    "unicode text 東京",
    "hidden states",
    "lazy dog",
    "gene expression in cells",
]


def _build(model: Path, docs: list[dict], folder: Path) -> Path:
    corpus = write_jsonl(folder.parent / f"{folder.name}.jsonl", docs)
    return build_index(corpus, folder, IndexSpec(model=ModelSpec(name=str(model), dtype="float32")))


class Running:
    """A uvicorn server on a free port of 127.0.0.1, run in a background thread: plain
    uvicorn, or with ``bounded`` the server `retriever serve` runs (its protocol, those
    connection limits and its stop)."""

    def __init__(self, app: Any, *, bounded: ConnectionLimits | None = None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))  # the port is ours from here: no race for it
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        if bounded is None:
            config = uvicorn.Config(app, log_level="warning", access_log=False)
            self.server = uvicorn.Server(config)
        else:
            self.server = make_server(
                app, limits=bounded, shutdown_timeout_s=2, on_stop=lambda: None
            )
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )
        self.thread.start()
        deadline = time.monotonic() + 30
        while call(self.url, "/health")[0] != 200:
            assert time.monotonic() < deadline, "the server did not answer /health"
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()
        assert not self.thread.is_alive()

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=10)


def call(
    base: str, path: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    """``(status, JSON)`` of a GET (no body) or POST; (0, None) while nothing listens."""
    data = (
        None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    )
    request = urllib.request.Request(
        base + path, data=data, headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())
    except (ConnectionError, urllib.error.URLError):
        return 0, None


def _query(text: str, **params: Any) -> str:
    return "/search?" + urllib.parse.urlencode({"query": text, **params})


@pytest.fixture(scope="module")
def index(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    docs = TOY_DOCS + synthetic_docs(20, seed=4)
    return _build(tiny_model, docs, tmp_path_factory.mktemp("served") / "index")


@pytest.fixture(scope="module")
def server(index: Path) -> Iterator[str]:
    running = Running(create_app(index, limits=LIMITS))
    yield running.url
    running.stop()


@pytest.fixture(scope="module")
def reference(index: Path) -> Iterator[Searcher]:
    searcher = Searcher.load(index)
    yield searcher
    searcher.close()


# --- every endpoint ------------------------------------------------------------------------


def test_search_get_and_post_answer_as_the_searcher(server: str, reference: Searcher) -> None:
    expected = reference.search("vitamin D and bone", k=5)
    generation = reference.folder.name
    for status, answer in (
        call(server, _query("vitamin D and bone", k=5)),
        call(server, "/search", {"query": "vitamin D and bone", "k": 5}),
    ):
        assert status == 200
        assert answer["generation"] == generation and answer["method"] == "dense"
        assert [hit["id"] for hit in answer["hits"]] == list(expected.ids)
        assert [hit["score"] for hit in answer["hits"]] == pytest.approx(expected.scores.tolist())
        first = expected[0]
        assert answer["hits"][0]["title"] == first.title
        assert answer["hits"][0]["snippet"] == " ".join(first.text.split())
        assert answer["hits"][0]["shared_tokens"] is None


def test_search_explains_each_hit_when_asked(server: str, reference: Searcher) -> None:
    status, answer = call(server, _query("vitamin D and bone", k=3, explain="true"))
    assert status == 200
    hits = reference.search("vitamin D and bone", k=3)
    shared = reference.shared_tokens("vitamin D and bone", hits)
    assert [hit["shared_tokens"] for hit in answer["hits"]] == [
        [token.to_dict() for token in tokens] for tokens in shared
    ]


def test_batch_search_is_the_beir_run(server: str, reference: Searcher) -> None:
    queries = {"a": "lazy dog", "b": "protein folding"}
    status, answer = call(server, "/batch_search", {"queries": queries, "k": 4})
    assert status == 200 and answer["generation"] == reference.folder.name
    expected = reference.batch_search(queries, k=4).to_beir()
    assert list(answer["results"]) == ["a", "b"]
    for qid, run in expected.items():
        assert list(answer["results"][qid]) == list(run)
        assert list(answer["results"][qid].values()) == pytest.approx(list(run.values()))


def test_documents_lens_info_health(server: str, reference: Searcher, index: Path) -> None:
    status, document = call(server, "/documents/d6")
    assert status == 200
    assert (document["id"], document["title"], document["metadata"]) == (
        "d6",
        "Unicode",
        {"lang": "mixed"},
    )
    assert document["text"] == "Café, naïve, 東京 ☕."
    status, lens = call(
        server, "/lens?" + urllib.parse.urlencode({"text": "bone disease", "top": 7})
    )
    assert status == 200
    expected = reference.explain("bone disease", top=7)
    assert (lens["raw"], lens["filtered"]) == (expected["raw"], expected["filtered"])
    status, info = call(server, "/info")
    assert status == 200 and info["documents"] == len(reference) == 26
    assert info["generation"] == reference.folder.name == current_generation(index).name
    assert info["model"]["weights_sha256"] == reference.manifest.weights_sha256
    assert info["filter"]["dim"] == reference.filter.dim and info["storage"]["storage"] == "float32"
    assert info["methods"] == ["dense"] and info["limits"]["max_k"] == 50
    assert call(server, "/health") == (200, {"status": "ok", "generation": reference.folder.name})


# --- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        (_query("fox", method="bm25"), None, 400, "cannot answer 'bm25'"),
        (_query("fox", method="nope"), None, 400, "unknown method 'nope'"),
        (_query("   "), None, 400, "empty query: give some text to search for"),
        (_query("fox", k=0), None, 400, "k must be at least 1, got 0"),
        (_query("fox", k=51), None, 422, "k must be at most 50 here, got 51"),
        (_query("fox", k="ten"), None, 422, "query.k: Input should be a valid integer"),
        ("/search", None, 422, "query.query: Field required"),
        (_query("x" * 201), None, 413, "201 characters long; this server takes at most 200"),
        ("/search", {"k": 3}, 422, "query: Field required"),
        ("/search", b"{not json", 422, "bad request: the body is not valid JSON"),
        ("/batch_search", {"queries": {}}, 400, "no queries"),
        ("/batch_search", {"queries": {str(i): "fox" for i in range(5)}}, 413, "at most 4"),
        ("/batch_search", {"queries": {"a": "fox", "b": ""}}, 400, "empty query"),
        ("/documents/nothing-here", None, 404, "no document 'nothing-here' in generation"),
        ("/lens?text=%20", None, 400, "empty text: give some text to look at"),
        ("/lens?text=fox&top=0", None, 400, "top must be at least 1, got 0"),
        ("/no/such/path", None, 404, "Not Found"),
        ("/search", {"query": "x" * (70 << 10)}, 413, "bytes; this server takes at most"),
    ],
)
def test_mistakes_are_one_line_json(
    server: str, path: str, body: Any, status: int, message: str
) -> None:
    got, answer = call(server, path, body)
    assert got == status
    assert set(answer) == {"error"} and message in answer["error"]
    assert "\n" not in answer["error"] and "Traceback" not in answer["error"]


# --- the API key ---------------------------------------------------------------------------


def test_the_api_key_is_required_but_not_for_health(
    index: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="retriever")
    running = Running(create_app(index, api_key="s3cret-key"))
    try:
        for headers in ({}, {"X-API-Key": "wrong"}, {"Authorization": "Bearer s3cret-kez"}):
            status, answer = call(running.url, _query("fox"), headers=headers)
            assert status == 401 and "API key" in answer["error"], headers
        assert call(running.url, "/info", headers={"X-API-Key": "nope"})[0] == 401
        for headers in ({"Authorization": "Bearer s3cret-key"}, {"X-API-Key": "s3cret-key"}):
            assert call(running.url, _query("fox"), headers=headers)[0] == 200
        assert call(running.url, "/health")[0] == 200
    finally:
        running.stop()
    started = [r.message for r in caplog.records if r.message.startswith("serving ")]
    stopped = [r.message for r in caplog.records if r.message.startswith("stopped serving ")]
    assert len(started) == 1 and "API key required" in started[0] and len(stopped) == 1


# --- one searcher, many clients ------------------------------------------------------------


def test_eight_concurrent_clients_get_the_searchers_answers(
    server: str, reference: Searcher
) -> None:
    expected = {query: reference.search(query, k=10) for query in QUERIES}

    def client(offset: int) -> list[tuple[str, int, Any]]:
        answers = []
        for round_ in range(3):
            for query in QUERIES[offset:] + QUERIES[:offset]:
                path, body = (
                    ("/search", {"query": query, "k": 10})
                    if round_ % 2
                    else (_query(query, k=10), None)
                )
                answers.append((query, *call(server, path, body)))
        return answers

    with ThreadPoolExecutor(8) as pool:
        everything = [a for answers in pool.map(client, range(8)) for a in answers]
    assert len(everything) == 8 * 3 * len(QUERIES)
    for query, status, answer in everything:
        assert status == 200, answer
        assert [hit["id"] for hit in answer["hits"]] == list(expected[query].ids)
        scores = [hit["score"] for hit in answer["hits"]]
        assert scores == pytest.approx(expected[query].scores.tolist(), abs=1e-6)


# --- following the index path --------------------------------------------------------------


def _wait_for(url: str, generation: str) -> None:
    deadline = time.monotonic() + 60
    while call(url, "/health")[1]["generation"] != generation:
        assert time.monotonic() < deadline, f"the server never answered from {generation}"
        time.sleep(0.02)


def test_the_server_follows_new_generations_without_failing_a_request(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    index = _build(tiny_model, TOY_DOCS, tmp_path / "followed")
    added = synthetic_docs(6, seed=9, prefix="new")
    docs = {current_generation(index).name: {d["_id"] for d in TOY_DOCS}}
    running = Running(create_app(index))
    closed: list[str] = []
    close = Searcher.close

    def recorded_close(searcher: Searcher) -> None:
        if not searcher._closed:
            closed.append(searcher.folder.name)
        close(searcher)

    monkeypatch.setattr(Searcher, "close", recorded_close)
    stop = threading.Event()

    def client(number: int) -> list[tuple[int, Any]]:
        answers = []
        while not stop.is_set():
            query = QUERIES[(number + len(answers)) % len(QUERIES)]
            if len(answers) % 2:
                answers.append(
                    call(running.url, "/batch_search", {"queries": {"q": query}, "k": 50})
                )
            else:
                answers.append(call(running.url, "/search", {"query": query, "k": 50}))
        return answers

    try:
        with ThreadPoolExecutor(4) as pool:
            clients = [pool.submit(client, number) for number in range(4)]
            time.sleep(0.3)
            assert (
                main(["-q", "add", str(index), str(write_jsonl(tmp_path / "new.jsonl", added))])
                == 0
            )
            docs[current_generation(index).name] = docs[next(iter(docs))] | {
                d["_id"] for d in added
            }
            _wait_for(running.url, current_generation(index).name)
            time.sleep(0.3)
            before = docs[current_generation(index).name]
            assert delete_documents(index, ["d2", "new1"]) == 2
            docs[current_generation(index).name] = before - {"d2", "new1"}
            _wait_for(running.url, current_generation(index).name)
            time.sleep(0.3)
            stop.set()
            answers = [answer for future in clients for answer in future.result()]
    finally:
        stop.set()
        running.stop()
    assert len(docs) == 3
    seen: dict[str, int] = {}
    for status, answer in answers:
        assert status == 200, answer  # no request failed, before, during or after a swap
        generation = answer["generation"]
        ids = (
            [hit["id"] for hit in answer["hits"]]
            if "hits" in answer
            else list(answer["results"]["q"])
        )
        # k exceeds every generation's size: each answer lists exactly its generation's docs.
        assert set(ids) == docs[generation], generation
        seen[generation] = seen.get(generation, 0) + 1
    assert set(seen) == set(docs)  # every generation answered someone
    # Each retired generation's searcher was closed, by the last request that used it.
    assert closed[: len(docs) - 1] == list(docs)[:2]
    assert closed[-1] == list(docs)[-1]  # closed at shutdown


# --- the command ---------------------------------------------------------------------------


def _serve_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    serve_command.add_parser(parser.add_subparsers())
    return parser.parse_args(["serve", *argv])


def test_the_command_refuses_in_one_line(
    index: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(RetrieverError, match="cannot read the API key file"):
        serve_command.run(_serve_args(str(index), "--api-key-file", str(tmp_path / "none")))
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(RetrieverError, match="must hold one key on one line"):
        serve_command.run(_serve_args(str(index), "--api-key-file", str(tmp_path / "empty")))
    with pytest.raises(RetrieverError, match="--max-k must be at least 1"):
        serve_command.run(_serve_args(str(index), "--max-k", "0"))
    with pytest.raises(RetrieverError):
        serve_command.run(_serve_args(str(tmp_path / "no-index"), "--port", "1"))
    monkeypatch.setitem(sys.modules, "fastapi", None)
    with pytest.raises(RetrieverError, match=r"pip install 'retriever\[serve\]'"):
        serve_command.run(_serve_args(str(index)))


def test_the_commands_help_fits_and_loads_nothing_heavy(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.test_cli_options import MEASURED

    monkeypatch.setenv("COLUMNS", "100")
    parser = argparse.ArgumentParser()
    serve_command.add_parser(parser.add_subparsers())
    text = parser._subparsers._group_actions[0].choices["serve"].format_help()
    assert [line for line in text.splitlines() if len(line) > 100] == []
    assert re.findall(MEASURED, text) == []
    assert "--api-key-file" in text and "--max-batch" in text
    program = (
        "import sys; import retriever.cli.serve; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'faiss', 'fastapi'}))"
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", program], cwd=root, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"
