"""BEIR datasets by name (``beir:NAME``): downloaded once from a mirror on 127.0.0.1, with
resume and an MD5 check, unzipped into the cache and read from there without a request;
one-line refusals (corrupted, truncated, offline, unknown name, missing split) and the
``retriever datasets`` listing. No model: a tiny BEIR zip built here stands in for BEIR's.
"""

from __future__ import annotations

import argparse
import hashlib
import http.server
import io
import json
import re
import socket
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from retriever import cli as retriever_cli
from retriever.cli import datasets as datasets_command
from retriever.cli.formatting import HelpFormatter
from retriever.core.errors import RetrieverError
from retriever.data import catalog as catalog
from retriever.data.catalog import BeirDataset, dataset_label
from retriever.data.datasets import corpus_file, load_qrels, load_queries, load_texts, scan_corpus

NAME = "tinybeir"
FORUMS = "tinyforums"
DOCS = 40


def _beir_files(top: str) -> dict[str, str]:
    documents = (
        {"_id": f"d{i}", "title": f"title {i}", "text": f"document {i} " * 40} for i in range(DOCS)
    )
    return {
        f"{top}/corpus.jsonl": "".join(json.dumps(d) + "\n" for d in documents),
        f"{top}/queries.jsonl": "".join(
            json.dumps({"_id": f"q{i}", "text": f"query {i}"}) + "\n" for i in range(4)
        ),
        f"{top}/qrels/test.tsv": "query-id\tcorpus-id\tscore\nq0\td0\t1\nq1\td1\t2\n",
        f"{top}/qrels/train.tsv": "query-id\tcorpus-id\tscore\nq2\td2\t1\nq3\td3\t1\n",
    }


def _zip(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zipped:
        for name, text in files.items():
            zipped.writestr(zipfile.ZipInfo(name, (2021, 1, 1, 0, 0, 0)), text)
    return buffer.getvalue()


ZIP = _zip(_beir_files(NAME))
FORUMS_ZIP = _zip({**_beir_files(f"{FORUMS}/alpha"), **_beir_files(f"{FORUMS}/beta")})
CUT = 5000  # bytes a truncated response sends before the server closes the connection


class Mirror:
    """A loopback HTTP server for ``NAME.zip`` files that honours ``Range: bytes=N-`` and
    records every request: its path, its Range header and the body bytes it sent."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.requests: list[dict[str, Any]] = []
        self.cut_after: int | None = None  # the next response stops after this many bytes
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        # A short poll: close() waits for the serving loop to look up.
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def _handler(mirror: Mirror) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            record = {"path": self.path, "range": self.headers.get("Range"), "sent": 0}
            mirror.requests.append(record)
            body = mirror.files.get(self.path.lstrip("/"))
            if body is None:
                self.send_error(404)
                return
            start = int(re.fullmatch(r"bytes=(\d+)-", record["range"])[1]) if record["range"] else 0
            if start >= len(body) and record["range"]:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206 if start else 200)
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            self.send_header("Content-Length", str(len(body) - start))
            self.end_headers()
            sent = body[start:]
            if mirror.cut_after is not None:
                sent, mirror.cut_after = sent[: mirror.cut_after], None
            self.wfile.write(sent)  # HTTP/1.0: the connection closes after this response
            record["sent"] = len(sent)

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Mirror]:
    """The catalogue with two tiny datasets, the cache in tmp_path, the mirror serving them."""
    monkeypatch.setenv("RETRIEVER_CACHE", str(tmp_path / "cache"))
    server = Mirror({f"{NAME}.zip": ZIP, f"{FORUMS}.zip": FORUMS_ZIP})
    monkeypatch.setenv(catalog.MIRROR_VARIABLE, server.url)
    md5 = hashlib.md5(ZIP).hexdigest()
    monkeypatch.setitem(catalog.BEIR_DATASETS, NAME, BeirDataset(NAME, md5, len(ZIP), DOCS))
    forums = BeirDataset(FORUMS, hashlib.md5(FORUMS_ZIP).hexdigest(), forums=("alpha", "beta"))
    monkeypatch.setitem(catalog.BEIR_DATASETS, FORUMS, forums)
    yield server
    server.close()


def _folder(tmp_path: Path, name: str = NAME) -> Path:
    return tmp_path / "cache" / "datasets" / name


def _refusal(call: Any, *args: Any) -> str:
    with pytest.raises(RetrieverError) as refused:
        call(*args)
    message = str(refused.value)
    assert "\n" not in message
    return message


def _closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


def test_a_name_downloads_once_and_reads_like_a_folder(
    mirror: Mirror, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scan = scan_corpus(f"beir:{NAME}")
    folder = _folder(tmp_path)
    assert scan.count == DOCS and scan.source == folder / "corpus.jsonl"
    assert [r["range"] for r in mirror.requests] == [None]
    assert mirror.requests[0]["sent"] == len(ZIP)
    assert load_queries(f"beir:{NAME}") == {f"q{i}": f"query {i}" for i in range(4)}
    assert load_qrels(f"beir:{NAME}") == {"q0": {"d0": 1}, "q1": {"d1": 2}}
    assert load_qrels(f"BEIR:{NAME}", "train") == {"q2": {"d2": 1}, "q3": {"d3": 1}}
    assert len(load_texts(f"beir:{NAME}", limit=3)) == 3
    # Nothing but the folder is left: no zip, no part, no staging folder.
    assert sorted(p.name for p in folder.parent.iterdir()) == [f".{NAME}.lock", NAME]
    assert len(mirror.requests) == 1
    # A second run reads the cache and asks nothing, even with no server to ask.
    monkeypatch.setenv(catalog.MIRROR_VARIABLE, _closed_port_url())
    assert corpus_file(f"beir:{NAME}") == folder / "corpus.jsonl"
    assert len(mirror.requests) == 1


def test_a_missing_split_names_the_splits_the_dataset_has(mirror: Mirror) -> None:
    message = _refusal(load_qrels, f"beir:{NAME}", "dev")
    assert message == f"beir:{NAME} has no qrels/dev.tsv (its splits: test, train)"


def test_eval_takes_a_name_and_refuses_a_missing_split_in_one_line(
    mirror: Mirror, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # The judgements are read before the index is opened: no index is needed to refuse.
    argv = ["-q", "eval", str(tmp_path / "no-index"), f"beir:{NAME}", "--split", "dev"]
    assert retriever_cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"retriever: error: beir:{NAME} has no qrels/dev.tsv (its splits: test, train)"]


def test_a_corrupted_download_is_refused_and_removed(mirror: Mirror, tmp_path: Path) -> None:
    mirror.files[f"{NAME}.zip"] = ZIP[:100] + bytes([ZIP[100] ^ 0xFF]) + ZIP[101:]
    message = _refusal(load_queries, f"beir:{NAME}")
    assert "corrupted" in message and hashlib.md5(ZIP).hexdigest() in message
    assert "rerun" in message
    root = _folder(tmp_path).parent
    assert not (root / f"{NAME}.zip.part").exists() and not (root / f"{NAME}.zip").exists()
    assert not _folder(tmp_path).exists()
    # The mirror mended, the next run downloads afresh (no Range: nothing was kept).
    mirror.files[f"{NAME}.zip"] = ZIP
    assert len(load_queries(f"beir:{NAME}")) == 4
    assert [r["range"] for r in mirror.requests] == [None, None]


def test_a_truncated_download_resumes_with_a_range_request(mirror: Mirror, tmp_path: Path) -> None:
    mirror.cut_after = CUT
    message = _refusal(scan_corpus, f"beir:{NAME}")
    assert "stopped at" in message and "rerun to resume" in message
    part = _folder(tmp_path).parent / f"{NAME}.zip.part"
    assert part.stat().st_size == CUT and not _folder(tmp_path).exists()
    assert scan_corpus(f"beir:{NAME}").count == DOCS
    assert [r["range"] for r in mirror.requests] == [None, f"bytes={CUT}-"]
    assert [r["sent"] for r in mirror.requests] == [CUT, len(ZIP) - CUT]
    assert not part.exists()


def test_a_whole_part_left_unchecked_is_checked_without_a_download(
    mirror: Mirror, tmp_path: Path
) -> None:
    # Killed after the last byte, before the check: the server has nothing past it (416).
    root = _folder(tmp_path).parent
    root.mkdir(parents=True)
    (root / f"{NAME}.zip.part").write_bytes(ZIP)
    assert len(load_queries(f"beir:{NAME}")) == 4
    assert [(r["range"], r["sent"]) for r in mirror.requests] == [(f"bytes={len(ZIP)}-", 0)]


def test_a_zip_placed_in_the_cache_by_hand_is_md5_checked(mirror: Mirror, tmp_path: Path) -> None:
    root = _folder(tmp_path).parent
    root.mkdir(parents=True)
    placed = root / f"{NAME}.zip"
    placed.write_bytes(ZIP[:100] + bytes([ZIP[100] ^ 0xFF]) + ZIP[101:])
    message = _refusal(load_queries, f"beir:{NAME}")
    assert f"the zip found at {placed} is corrupted" in message and "rerun" in message
    assert not placed.exists() and not _folder(tmp_path).exists()
    assert mirror.requests == []  # refused before any download
    placed.write_bytes(ZIP)  # the right zip, placed by hand, is used without a download
    assert len(load_queries(f"beir:{NAME}")) == 4 and mirror.requests == []


def test_offline_says_in_one_line_where_to_place_the_folder(
    mirror: Mirror, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed = _closed_port_url()
    monkeypatch.setenv(catalog.MIRROR_VARIABLE, closed)
    message = _refusal(corpus_file, f"beir:{NAME}")
    assert message.startswith(f"cannot reach {closed}/{NAME}.zip (")
    assert f"place its {NAME}/ folder at {_folder(tmp_path)}" in message
    assert f"{catalog.OFFICIAL_URL}/{NAME}.zip" in message
    # The folder placed by hand is used as is.
    for relative, text in _beir_files(NAME).items():
        path = _folder(tmp_path).parent / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert scan_corpus(f"beir:{NAME}").count == DOCS


def test_a_mirror_without_the_zip_is_refused_in_one_line(mirror: Mirror, tmp_path: Path) -> None:
    del mirror.files[f"{NAME}.zip"]
    message = _refusal(load_queries, f"beir:{NAME}")
    assert "answered HTTP 404" in message and catalog.MIRROR_VARIABLE in message


def test_unknown_names_are_refused_with_close_names() -> None:
    message = _refusal(load_queries, "beir:scifcat")
    assert "unknown BEIR dataset 'scifcat'" in message and "beir:scifact" in message
    assert "BEIR does not distribute 'bioasq'" in _refusal(corpus_file, "beir:bioasq")
    forums = _refusal(corpus_file, "beir:cqadupstack")
    assert "beir:cqadupstack/FORUM" in forums and "android" in forums
    assert "has no forum 'cooking'" in _refusal(corpus_file, "beir:cqadupstack/cooking")


def test_a_forum_of_a_many_folder_zip(mirror: Mirror, tmp_path: Path) -> None:
    assert load_qrels(f"beir:{FORUMS}/beta", "train") == {"q2": {"d2": 1}, "q3": {"d3": 1}}
    assert scan_corpus(f"beir:{FORUMS}/alpha").count == DOCS
    assert len(mirror.requests) == 1
    assert dataset_label(f"beir:{FORUMS}/alpha") == f"{FORUMS}-alpha"
    assert dataset_label("../shared/datasets/scifact") == "scifact"


def test_the_catalogue_holds_beir_names_with_their_md5() -> None:
    names = set(catalog.BEIR_DATASETS)
    assert {"scifact", "nfcorpus", "arguana", "fiqa", "trec-covid", "msmarco"} <= names
    for entry in catalog.BEIR_DATASETS.values():
        assert re.fullmatch(r"[0-9a-f]{32}", entry.md5), entry.name
    assert catalog.BEIR_DATASETS["scifact"].md5 == "5f7d1de60b170fc8027bb7898e2efca1"
    assert catalog.zip_url(catalog.BEIR_DATASETS["scifact"], catalog.OFFICIAL_URL) == (
        "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/scifact.zip"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="retriever", formatter_class=HelpFormatter)
    datasets_command.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def _datasets(capsys: pytest.CaptureFixture, *argv: str) -> str:
    capsys.readouterr()
    args = _parser().parse_args(["datasets", *argv])
    assert args.run(args) == 0
    return capsys.readouterr().out


def test_the_listing_shows_sizes_and_what_is_cached(
    mirror: Mirror, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    rows = {row["name"]: row for row in json.loads(_datasets(capsys, "--json"))}
    row = rows[f"beir:{NAME}"]
    assert row["cached"] is False and row["folder"] == str(_folder(tmp_path))
    assert row["zip_bytes"] == len(ZIP) and row["documents"] == DOCS
    assert row["url"] == f"{mirror.url}/{NAME}.zip"
    assert rows["beir:scifact"]["documents"] == 5183
    assert mirror.requests == []  # listing asks nothing
    text = _datasets(capsys)
    assert f"not cached, unzips to {_folder(tmp_path)}" in text
    assert "forums (beir:cqadupstack/FORUM): android," in text
    assert _datasets(capsys, "get", NAME).split() == [f"beir:{NAME}", str(_folder(tmp_path))]
    row = {r["name"]: r for r in json.loads(_datasets(capsys, "list", "--json"))}[f"beir:{NAME}"]
    assert row["cached"] is True and row["splits"] == ["test", "train"]
    assert f"cached at {_folder(tmp_path)} (splits: test, train)" in _datasets(capsys)
    assert len(mirror.requests) == 1


def test_the_listing_shows_a_broken_download(
    mirror: Mirror, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    mirror.cut_after = CUT
    _refusal(corpus_file, f"beir:{NAME}")
    row = {r["name"]: r for r in json.loads(_datasets(capsys, "--json"))}[f"beir:{NAME}"]
    assert row["cached"] is False and row["partial_bytes"] == CUT
    assert "partly downloaded" in _datasets(capsys)


def test_datasets_get_refuses_in_one_line_through_the_command_line(
    mirror: Mirror, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    if datasets_command not in retriever_cli._COMMANDS:  # until the command is registered
        commands = (*retriever_cli._COMMANDS, datasets_command)
        monkeypatch.setattr(retriever_cli, "_COMMANDS", commands)
    monkeypatch.setenv(catalog.MIRROR_VARIABLE, _closed_port_url())
    assert retriever_cli.main(["-q", "datasets", "get", NAME]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("retriever: error: cannot reach ")
    # A typo among the names downloads nothing.
    assert retriever_cli.main(["-q", "datasets", "get", NAME, "scifcat"]) == 2
    assert "did you mean beir:scifact" in capsys.readouterr().err
    assert mirror.requests == []


def test_the_help_fits_and_quotes_no_figure(
    capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    with pytest.raises(SystemExit):
        _parser().parse_args(["datasets", "--help"])
    text = capsys.readouterr().out
    assert catalog.MIRROR_VARIABLE in text and "beir:NAME" in text
    assert max(map(len, text.splitlines())) <= 100
    assert not re.findall(r"\d\.\d{2,}|\b\d+(?:\.\d+)? ?(?:ms|s|x|%)(?!\w)", text)
