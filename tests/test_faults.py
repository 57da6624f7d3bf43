"""Fault injection: concurrent writers, readers across swaps, kill -9, full disks, corrupt
parts, invalid text, crafted manifests. Every cell checks the exit code, the one-line
message, and that nothing was lost or half-written.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import lmdb
import numpy as np
import pytest

from retriever import FilterSpec, RetrieverError, Searcher, build_index
from retriever.cli import main
from retriever.core import generations as generations_module
from retriever.core.generations import generations_folder, lock_path, writer_lock
from retriever.core.spec import DenseSpec, IndexSpec, ModelSpec, SearchParams
from retriever.data.datasets import scan_corpus
from retriever.encode import models as models_module
from retriever.encode.embedfilter import EmbedFilter
from retriever.encode.encoder import Encoder
from retriever.index.build import delete_documents
from retriever.index.options import BuildOptions
from retriever.parts.bm25 import BM25_DIR, BM25Builder, BM25Index
from retriever.parts.sparse import SPARSE_DIR, KeyTokenIndex, SparseSpec
from tests.conftest import QUICKSTART, TOY_DOCS, synthetic_docs, write_jsonl

ROOT = Path(__file__).resolve().parents[1]


def _cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    return code, (lines[-1] if lines else "")


def _build(
    model: Path,
    corpus: Path,
    out: Path,
    *,
    tau: float = 2,
    sparse: SparseSpec | None = None,
    bm25: bool = False,
    overwrite: bool = False,
) -> Path:
    spec = IndexSpec(
        model=ModelSpec(name=str(model), dtype="float32"),
        filter=FilterSpec(tau=tau),
        sparse=sparse,
        bm25=bm25,
    )
    return build_index(corpus, out, spec, BuildOptions(overwrite=overwrite))


def _loads_and_searches(index: Path) -> int:
    """The dimension of a loadable index whose every document is found by its own text."""
    searcher = Searcher.load(index)
    try:
        for document in list(searcher.docstore)[:3]:
            assert searcher.search(document.embedding_text, k=1)[0].id == document.id
        return searcher.filter.dim
    finally:
        searcher.close()


# --- one writer per index path --------------------------------------------------------


@pytest.mark.parametrize("command", ["index", "add"])
def test_a_second_writer_fails_at_once_naming_the_holder(
    command: str,
    tiny_model: Path,
    toy_corpus: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Refused before the model loads, for `add` as for `index`."""
    import threading

    out = tmp_path / "idx"
    if command == "add":
        out = _build(tiny_model, toy_corpus, out)
        toy_corpus = write_jsonl(tmp_path / "new.jsonl", [{"_id": "new", "text": "Fresh."}])
    argv = [command, str(toy_corpus), "--out", str(out)] if command == "index" else []
    argv = argv or [command, str(out), str(toy_corpus)]
    monkeypatch.setattr("retriever.encode.encoder.load_model", lambda *a, **k: 1 / 0)
    holding, done = threading.Event(), threading.Event()

    def other_writer() -> None:  # another thread stands for another process
        with writer_lock(out):
            holding.set()
            done.wait(600)  # released by the test as soon as its refused build returns

    thread = threading.Thread(target=other_writer)
    thread.start()
    assert holding.wait(600), "the other writer never took the lock"
    try:
        code, message = _cli(capsys, *argv, "--model", str(tiny_model))
    finally:
        done.set()
        thread.join()
    assert code == 2 and f"another writer (pid {os.getpid()})" in message
    assert out.exists() == (command == "add")


def _writer_process(model: Path, corpus: Path, out: Path, *extra: str) -> subprocess.Popen:
    argv = ["index", str(corpus), "--out", str(out), "--model", str(model), "--dtype"]
    argv += ["float32", *extra]
    return subprocess.Popen(
        [sys.executable, "-m", "retriever.cli", "-q", *argv],
        cwd=ROOT,
        env={**os.environ},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_concurrent_builds_into_one_new_path(tiny_model: Path, tmp_path: Path) -> None:
    corpus = write_jsonl(tmp_path / "docs.jsonl", synthetic_docs(300))
    out = tmp_path / "idx"
    writers = [_writer_process(tiny_model, corpus, out) for _ in range(2)]
    results = [(w.wait(), w.stderr.read()) for w in writers]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, err in results if code == 2).strip().splitlines()[-1]
    assert "another writer (pid" in refused or "already holds an index" in refused
    assert _loads_and_searches(out) == 16


# --- readers see one generation -----------------------------------------------------


def test_a_reader_keeps_its_generation_across_a_swap(
    tiny_model: Path, toy_corpus: Path, tmp_path: Path
) -> None:
    out = _build(tiny_model, toy_corpus, tmp_path / "idx", tau=2)
    old = out.resolve()
    reader = Searcher.load(out)
    _build(tiny_model, toy_corpus, out, tau=4, overwrite=True)
    assert out.resolve() != old and old.is_dir()  # kept: a reader holds it
    hits = reader.search("Foxes The quick brown fox jumps over the lazy dog.", k=2)
    assert hits[0].id == "d2" and reader.filter.dim == reader.index.dim == 16
    assert _loads_and_searches(out) == 8
    reader.close()
    _build(tiny_model, toy_corpus, out, tau=8, overwrite=True)
    assert not old.exists()  # unread now: deleted by the next writer
    assert len(list(generations_folder(out).iterdir())) == 1


def test_a_swap_in_the_middle_of_a_load_is_not_seen(
    tiny_model: Path, toy_corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import retriever.search.searcher as searcher_module

    out = _build(tiny_model, toy_corpus, tmp_path / "idx", tau=2)
    real = searcher_module.load_encoder_for

    def swap_then_load(*args, **kwargs):
        # The model loads for seconds: another process publishes a new generation meanwhile.
        _build(tiny_model, toy_corpus, out, tau=4, overwrite=True)
        return real(*args, **kwargs)

    monkeypatch.setattr(searcher_module, "load_encoder_for", swap_then_load)
    searcher = Searcher.load(out)
    assert searcher.manifest.dim == searcher.filter.dim == searcher.index.dim == 16
    assert searcher.search("Vitamin D Vitamin D deficiency is associated with bone disease.")[
        0
    ].id == ("d1")


# --- kill -9 at every step of a build and of an overwrite ---------------------------


_KILL_AT = """
import os, sys
import retriever.core.generations as generations
from retriever.cli import main

step = sys.argv[1]
def die(*args, **kwargs):
    os.kill(os.getpid(), 9)
if step == "before-rename":
    generations._fsync_tree = die
elif step == "between-rename-and-link":
    generations._point = die
elif step == "after-link":
    generations.remove_unread_generations = die
elif step == "while-writing-parts":
    import retriever.parts.dense.backends as backends
    backends.save_faiss_index = die
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize(
    "step", ["while-writing-parts", "before-rename", "between-rename-and-link", "after-link"]
)
def test_kill_9_at_each_step_of_an_overwrite(
    step: str, tiny_model: Path, toy_corpus: Path, tmp_path: Path
) -> None:
    out = _build(tiny_model, toy_corpus, tmp_path / "idx", tau=2)
    argv = ["index", str(toy_corpus), "--out", str(out), "--model", str(tiny_model)]
    argv += ["--dtype", "float32", "--tau", "4", "--overwrite"]
    killed = subprocess.run(
        [sys.executable, "-c", _KILL_AT, step, *argv], cwd=tmp_path, capture_output=True
    )
    assert killed.returncode == -signal.SIGKILL
    # The path resolves to a complete index at every step: the old one until the link
    # is swapped, the new one after.
    assert _loads_and_searches(out) == (8 if step == "after-link" else 16)
    # The next writer clears what the dead one left (its staging or unpublished folder).
    _build(tiny_model, toy_corpus, out, tau=8, overwrite=True)
    assert [p.name for p in generations_folder(out).iterdir()] == [out.resolve().name]


def test_kill_9_at_random_moments_of_a_first_build(tiny_model: Path, tmp_path: Path) -> None:
    corpus = write_jsonl(tmp_path / "docs.jsonl", synthetic_docs(2000))
    out = tmp_path / "idx"
    for delay in (1.0, 2.0, 3.0, 4.0):
        writer = _writer_process(tiny_model, corpus, out, "--chunk-size", "256")
        time.sleep(delay)
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        if out.exists():
            assert _loads_and_searches(out) == 16  # finished before the kill: complete
            break
        assert not out.is_symlink()  # never a dangling link
    finished = _writer_process(tiny_model, corpus, out, "--chunk-size", "256", "--overwrite")
    assert finished.wait() == 0, finished.stderr.read()
    assert _loads_and_searches(out) == 16


# --- full disks -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "error"),
    [
        ("retriever.store.embeddings.np.save", OSError(28, "No space left on device")),
        (
            "retriever.parts.dense.backends.save_faiss_index",
            RuntimeError("write error (No space left on device)"),
        ),
        ("retriever.parts.docstore.DocStoreWriter.put", lmdb.DiskError("MDB_DISK_FULL")),
    ],
)
def test_a_full_disk_is_one_line_and_keeps_the_old_index(
    target: str,
    error: Exception,
    tiny_model: Path,
    toy_corpus: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    out = _build(tiny_model, toy_corpus, tmp_path / "idx", tau=2)

    def full(*args, **kwargs):
        raise error

    monkeypatch.setattr(target, full)
    code, message = _cli(
        capsys,
        "index",
        str(toy_corpus),
        "--out",
        str(out),
        "--model",
        str(tiny_model),
        "--tau",
        "4",
        "--overwrite",
        "--limit",
        "5",
    )
    assert code == 2 and "no space left on the device while writing" in message
    assert "MiB free now" in message
    assert _loads_and_searches(out) == 16
    assert [p.name for p in generations_folder(out).iterdir()] == [out.resolve().name]


def test_a_failed_first_build_leaves_nothing_behind(
    tiny_model: Path, toy_corpus: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    def full(*args, **kwargs):
        raise lmdb.DiskError("MDB_DISK_FULL")

    monkeypatch.setattr("retriever.parts.docstore.DocStoreWriter.put", full)
    out = tmp_path / "first" / "idx"
    argv = ["index", str(toy_corpus), "--out", str(out), "--model", str(tiny_model)]
    code, message = _cli(capsys, *argv, "--store", str(tmp_path / "store"))
    assert code == 2 and "no space left on the device while writing" in message
    assert sorted(p.name for p in out.parent.iterdir()) == []  # no lock file, no folders
    monkeypatch.undo()  # the disk has room again: the same command builds
    assert main(["-q", *argv, "--store", str(tmp_path / "store")]) == 0
    assert _loads_and_searches(out) > 0
    with writer_lock(out):  # the lock still works on the file a later writer finds
        assert lock_path(out).is_file()
    assert lock_path(out).is_file()  # an index exists now: its lock file stays


@contextlib.contextmanager
def _tmpfs(tmp_path: Path, size: str) -> Iterator[Path]:
    """A real tmpfs of ``size`` mounted for the test (skipped where none can be)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; the injected cells above cover the rest")
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)]
    ).returncode:
        pytest.skip("this sandbox cannot mount a tmpfs")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_a_really_full_tmpfs(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _tmpfs(tmp_path, "2m") as disk:
        small = write_jsonl(tmp_path / "small.jsonl", TOY_DOCS)
        out = _build(tiny_model, small, disk / "idx")
        big = [{"_id": f"b{i}", "text": "bone disease " * 4000} for i in range(60)]
        corpus = write_jsonl(tmp_path / "big.jsonl", big)
        argv = ["index", str(corpus), "--out", str(out), "--model", str(tiny_model)]
        argv += ["--dtype", "float32", "--max-length", "32", "--overwrite"]
        # The disk check refuses before encoding: the index needs more than is free.
        code, message = _cli(capsys, *argv)
        assert code == 2 and "not enough disk" in message and "free" in message
        # Where the estimate is wrong (here: made to say there is room), the write that
        # fills the disk is still one line, and the old index still serves.
        monkeypatch.setattr("retriever.store.pacing.free_bytes", lambda folder: 10**12)
        code, message = _cli(capsys, *argv)
        assert code == 2 and f"no space left on the device while writing {disk}" in message
        assert _loads_and_searches(out) == 16


def test_overwrite_on_a_disk_already_full_is_one_line_not_sigbus(
    tiny_model: Path, tmp_path: Path
) -> None:
    """LMDB's lock table is written through a memory map: on a full disk that was SIGBUS
    (exit 135, no message) when the new docstore was opened."""
    with _tmpfs(tmp_path, "3m") as disk:
        corpus = write_jsonl(tmp_path / "docs.jsonl", TOY_DOCS)
        out = _build(tiny_model, corpus, disk / "idx")
        filler = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
        try:  # every remaining byte of the disk
            while os.write(filler, b"\0" * 4096):
                pass
        except OSError:
            pass
        finally:
            os.close(filler)
        argv = ["index", str(corpus), "--out", str(out), "--model", str(tiny_model)]
        argv += ["--dtype", "float32", "--overwrite", "--store", str(tmp_path / "store")]
        # Its own process: a SIGBUS would kill the test runner. The disk check refuses
        # first; past it (an estimate that says there is room), the docstore's open must
        # still be one line.
        for room, said in ((None, "not enough disk"), (10**12, "no space left")):
            program = (
                "import retriever.store.pacing as p\n"
                f"p.free_bytes = lambda f: {room} or p.free_bytes(f)"
                if room
                else "pass"
            ) + "\nimport sys\nfrom retriever.cli import main\nsys.exit(main(sys.argv[1:]))"
            done = subprocess.run(
                [sys.executable, "-c", program, "-q", *argv], capture_output=True, text=True
            )
            lines = done.stderr.strip().splitlines()
            assert done.returncode == 2, (done.returncode, done.stderr[-500:])
            assert len(lines) == 1 and said in lines[0]
        assert _loads_and_searches(out) == 16


# --- corrupt or crafted index folders -------------------------------------------------


@pytest.fixture
def index_copy(tiny_model: Path, toy_corpus: Path, tmp_path: Path) -> Path:
    """A built index's generation folder, free to damage."""
    return _build(tiny_model, toy_corpus, tmp_path / "idx").resolve()


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def _damage_docstore_record(folder: Path) -> None:
    env = lmdb.open(str(folder / "docstore"), max_dbs=2)
    with env.begin(write=True, db=env.open_db(b"docs")) as txn:
        txn.put((0).to_bytes(8, "big"), b'{"_id": "d1", "text": "no title"}')
    env.close()


def _write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (
            lambda f: os.truncate(f / "docstore" / "data.mdb", 10_000),
            "is truncated (10000 bytes, LMDB needs",
        ),
        (lambda f: _write_json(f / "manifest.json", []), "is not a retriever index manifest"),
        (
            lambda f: _write_json(
                f / "manifest.json", {**_manifest(f), "model": {"weights_sha256": "x"}}
            ),
            "is damaged: 'model.name' should be str, it is missing",
        ),
        (
            lambda f: _write_json(
                f / "manifest.json",
                {**_manifest(f), "documents": {**_manifest(f)["documents"], "count": "6"}},
            ),
            "'documents.count' should be int, it is a str",
        ),
        # Caught at load by the checksum of the file (before any search reads the record).
        (_damage_docstore_record, "docstore/data.mdb"),
        (lambda f: (f / "index.faiss").unlink(), "cannot read"),
    ],
)
def test_corrupt_parts_are_one_line(
    damage, message: str, index_copy: Path, capsys: pytest.CaptureFixture
) -> None:
    damage(index_copy)
    code, line = _cli(capsys, "search", str(index_copy), "Vitamin D Vitamin D deficiency")
    assert code == 2 and line.startswith("retriever: error: ") and message in line


def test_a_faiss_file_of_another_dimension(index_copy: Path, capsys: pytest.CaptureFixture) -> None:
    from retriever.parts.dense.faiss_index import build_faiss_index, save_faiss_index

    save_faiss_index(build_faiss_index(np.eye(6, 8, dtype=np.float32), "Flat"), index_copy)
    code, line = _cli(capsys, "search", str(index_copy), "fox")
    assert (
        code == 2
        and "dimensions differ (the filter 16, the manifest 16, the faiss index 8)" in line
    )


def test_corrupt_or_pickled_weights_are_refused_without_running_them(
    tiny_model: Path, tmp_path: Path
) -> None:
    import shutil

    import torch

    corrupt = tmp_path / "corrupt"
    shutil.copytree(tiny_model, corrupt)
    (corrupt / "model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(RetrieverError, match="cannot load model .*only safetensors"):
        models_module.load_model(
            models_module.resolve_model(str(corrupt)), torch.float32, torch.device("cpu")
        )
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_model, pickled)
    (pickled / "model.safetensors").unlink()
    torch.save({"weights": torch.zeros(1)}, pickled / "pytorch_model.bin")
    with pytest.raises(RetrieverError, match="only safetensors weights are loaded"):
        models_module.load_model(
            models_module.resolve_model(str(pickled)), torch.float32, torch.device("cpu")
        )


def test_a_manifest_naming_another_model_loads_nothing(
    index_copy: Path, other_tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = _manifest(index_copy)
    manifest["spec"]["model"]["name"] = str(other_tiny_model)  # hash left as the real model's
    _write_json(index_copy / "manifest.json", manifest)

    def never(*args, **kwargs):
        raise AssertionError("weights were loaded before the hash was checked")

    monkeypatch.setattr("retriever.encode.encoder.load_model", never)
    with pytest.raises(RetrieverError, match="was built with weights sha256 .* would not be"):
        Searcher.load(index_copy)


# --- text that is not valid Unicode ---------------------------------------------------


def test_invalid_unicode_in_a_corpus_and_a_query(
    tiny_model: Path, tmp_path: Path, index_copy: Path, capsys: pytest.CaptureFixture
) -> None:
    corpus = tmp_path / "bad.jsonl"
    corpus.write_text('{"_id": "ok", "text": "fine"}\n{"_id": "x", "text": "a \\ud800 b"}\n')
    code, line = _cli(
        capsys, "index", str(corpus), "--out", str(tmp_path / "o"), "--model", str(tiny_model)
    )
    assert (
        code == 2 and 'bad.jsonl:2: field "text" holds an invalid Unicode character (U+D800' in line
    )
    # A non-UTF-8 byte on the command line reaches Python as a lone surrogate.
    code, line = _cli(capsys, "search", str(index_copy), "caf\udce9")
    assert code == 2 and "invalid Unicode character (U+DCE9" in line


def test_empty_queries_are_refused_by_every_method(
    tiny_model: Path, toy_corpus: Path, tmp_path: Path
) -> None:
    out = _build(tiny_model, toy_corpus, tmp_path / "idx", bm25=True)
    searcher = Searcher.load(out)
    for method in ("dense", "bm25", "dense+bm25"):
        with pytest.raises(RetrieverError, match="empty query"):
            searcher.search(" ", method=method)


# --- leftovers and permissions ---------------------------------------------------------


def test_generations_honour_the_umask(tiny_model: Path, toy_corpus: Path, tmp_path: Path) -> None:
    previous = os.umask(0o002)
    try:
        out = _build(tiny_model, toy_corpus, tmp_path / "idx")
    finally:
        os.umask(previous)
    assert out.resolve().stat().st_mode & 0o777 == 0o775
    assert (out / "manifest.json").stat().st_mode & 0o777 == 0o664


# --- cheap checks come before the model loads -----------------------------------------


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--tau", "1000"], "--tau 1000 keeps 0 of the model's 32 dimensions"),
        (["--tau", "inf"], "--tau must be a finite number"),
        (["--dim", "10000"], "--dim 10000 keeps 10000 of the model's 32"),
        (["--index-type", "Flat", "--nprobe", "4"], "--nprobe does not apply"),
    ],
)
def test_range_checks_run_before_the_model_loads(
    flags: list[str],
    message: str,
    tiny_model: Path,
    toy_corpus: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    def never(*args, **kwargs):
        raise AssertionError("the model was loaded before a cheap check")

    monkeypatch.setattr("retriever.encode.encoder.load_model", never)
    code, line = _cli(
        capsys,
        "index",
        str(toy_corpus),
        "--out",
        str(tmp_path / "o"),
        "--model",
        str(tiny_model),
        *flags,
    )
    assert code == 2 and message in line


def test_k_is_checked_before_the_model_loads(
    index_copy: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr("retriever.encode.encoder.load_model", lambda *a, **k: 1 / 0)
    code, line = _cli(capsys, "search", str(index_copy), "fox", "-k", "0")
    assert code == 2 and "-k must be at least 1" in line


# --- what already held, kept holding -----------------------------------------------------


def test_eight_threads_share_one_searcher(index_copy: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    searcher = Searcher.load(index_copy)
    queries = [d["title"] + " " + d["text"] for d in TOY_DOCS] * 4
    serial = [[h.id for h in searcher.search(q, k=3)] for q in queries]
    with ThreadPoolExecutor(8) as pool:
        parallel = list(pool.map(lambda q: [h.id for h in searcher.search(q, k=3)], queries))
    assert parallel == serial


def test_eight_processes_search_one_index(index_copy: Path) -> None:
    argv = [sys.executable, "-m", "retriever.cli", "-q", "search", str(index_copy)]
    searches = [
        subprocess.Popen(
            [*argv, "Foxes The quick brown fox", "--json", "-k", "1"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(8)
    ]
    results = [(p.wait(), p.stdout.read()) for p in searches]
    assert all(code == 0 and json.loads(out)[0]["id"] == "d2" for code, out in results)


def test_a_100000_character_document(tiny_model: Path, tmp_path: Path) -> None:
    long = {"_id": "long", "title": "Huge", "text": "protein folding " * 6250}
    corpus = write_jsonl(tmp_path / "docs.jsonl", [*TOY_DOCS, long])
    searcher = Searcher.load(_build(tiny_model, corpus, tmp_path / "idx"))
    assert len(searcher.docstore.get(searcher.docstore.key_of("long")).text) == 100_000
    assert searcher.search("Huge " + long["text"][:200], k=1)[0].id == "long"


# --- faults met while building ----------------------------------------------------------
#
# Each is found before the expensive work and said in one line: damaged embedding-store
# shards, document ids too long for the docstore, settings that cannot work, and the system
# refusing a write (a full disk, a read-only folder).


CHUNK = 8


def _build_cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str]:
    """Run the command quietly; its exit status and its one line on stderr."""
    code = main(["-q", *argv])
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) <= 1, lines  # one line, never a traceback
    return code, (lines[0] if lines else "")


def _build_loads_and_searches(index: Path) -> int:
    """The document count of a loadable index whose documents are found by their text."""
    searcher = Searcher.load(index)
    try:
        for document in list(searcher.docstore)[:3]:
            assert searcher.search(document.embedding_text, k=1)[0].id == document.id
        return len(searcher.docstore)
    finally:
        searcher.close()


@pytest.fixture
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading a model fails the test: a refusal must come before it."""

    def load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(Encoder, "load", load)
    monkeypatch.setattr(Searcher, "load", load)


@pytest.fixture
def no_encoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def encode(*args, **kwargs):
        raise AssertionError("documents were encoded")

    monkeypatch.setattr(Encoder, "encode_poolings", encode)


# --- damaged embedding-store shards --------------------------------------------------


@pytest.fixture(scope="module")
def encoded(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(corpus, complete store) of 20 documents in shards of 8, 8 and 4, both poolings."""
    folder = tmp_path_factory.mktemp("encoded")
    corpus = write_jsonl(folder / "corpus.jsonl", synthetic_docs(20))
    store = folder / "store"
    argv = ["encode", str(corpus), "--out", str(store), "--chunk-size", str(CHUNK)]
    argv += ["--pooling", "mean,last"]
    assert main(["-q", *argv, "--model", str(tiny_model), "--dtype", "float32"]) == 0
    return corpus, store


@pytest.fixture
def store(encoded: tuple[Path, Path], tmp_path: Path) -> Path:
    """A copy of the encoded store, free to damage."""
    return Path(shutil.copytree(encoded[1], tmp_path / "store"))


def _shard_truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _resave(path: Path, change) -> None:
    np.save(path, change(np.load(path)), allow_pickle=False)


def _record(path: Path, **fields) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))


DAMAGES = {
    "truncated array": (lambda s: _shard_truncate(s / "000001.mean.npy", 0.9), "header says"),
    "rows missing": (lambda s: _resave(s / "000001.last.npy", lambda a: a[:-1]), "not (8, d)"),
    "one dimension": (lambda s: _resave(s / "000001.mean.npy", np.ravel), "not (8, d)"),
    "poolings differ": (
        lambda s: _resave(s / "000001.mean.npy", lambda a: a[:, :-1]),
        "poolings have different dimensions",
    ),
    "float64": (lambda s: _resave(s / "000001.mean.npy", lambda a: a.astype(float)), "float64"),
    "not an array": (
        lambda s: (s / "000001.mean.npy").write_bytes(b"garbage"),
        "not a readable array",
    ),
    "array missing": (lambda s: (s / "000001.last.npy").unlink(), "000001.last.npy is missing"),
    "truncated documents": (lambda s: _shard_truncate(s / "000001.docs.jsonl"), "complete lines"),
    "documents missing": (lambda s: (s / "000001.docs.jsonl").unlink(), "is missing"),
    "record count": (lambda s: _record(s / "000001.json", count=7), "record says 7 documents"),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_shard_is_one_line_before_the_model_loads(
    damage: str, store: Path, tmp_path: Path, no_model: None, capsys: pytest.CaptureFixture
) -> None:
    harm, said = DAMAGES[damage]
    harm(store / "shards")
    code, message = _build_cli(
        capsys, "index", "--from", str(store), "--out", str(tmp_path / "idx")
    )
    assert code == 2 and message.startswith("retriever: error: shard 000001 of the embedding")
    assert said in message and "rerun `retriever encode` into this store" in message
    assert not (tmp_path / "idx").exists()


def test_one_shard_of_another_dimension_is_named(
    store: Path, tmp_path: Path, no_model: None
) -> None:
    for pooling in ("mean", "last"):
        _resave(store / "shards" / f"000002.{pooling}.npy", lambda a: a[:, :-1])
    with pytest.raises(RetrieverError, match="shard 000002 .* 31 dimensions, the other shards' 32"):
        build_index(None, tmp_path / "idx", None, BuildOptions(from_store=store))


def test_a_broken_stored_document_is_one_line_and_publishes_nothing(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path = store / "shards" / "000000.docs.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    lines[2] = b'{"_id": "s2", "tit\n'  # the line count holds: found when it is read
    path.write_bytes(b"".join(lines))
    code, message = _build_cli(
        capsys, "index", "--from", str(store), "--out", str(tmp_path / "idx")
    )
    assert code == 2 and "000000.docs.jsonl line 3 is not a stored document" in message
    assert not (tmp_path / "idx").exists()


def test_encoding_again_repairs_a_damaged_shard(
    encoded: tuple[Path, Path], store: Path, tiny_model: Path, tmp_path: Path
) -> None:
    _shard_truncate(store / "shards" / "000001.mean.npy", 0.9)
    _resave(store / "shards" / "000002.last.npy", lambda a: a[:, :-1])
    argv = ["encode", str(encoded[0]), "--out", str(store), "--chunk-size", str(CHUNK)]
    argv += ["--pooling", "mean,last"]
    assert main(["-q", *argv, "--model", str(tiny_model), "--dtype", "float32"]) == 0
    assert main(["-q", "index", "--from", str(store), "--out", str(tmp_path / "idx")]) == 0
    assert _build_loads_and_searches(tmp_path / "idx") == 20


# --- document ids longer than LMDB's keys --------------------------------------------


def test_ids_over_511_bytes_are_refused_by_the_scan(tmp_path: Path) -> None:
    fits = write_jsonl(tmp_path / "fits.jsonl", [{"_id": "a" * 511, "text": "x"}])
    assert scan_corpus(fits).count == 1
    for long_id in ("b" * 512, "é" * 256):  # 256 characters, 512 bytes
        docs = [{"_id": "a", "text": "x"}, {"_id": "c", "text": "y"}, {"_id": long_id, "text": "z"}]
        corpus = write_jsonl(tmp_path / "long.jsonl", docs)
        with pytest.raises(RetrieverError, match=r"long\.jsonl:3: document id .* 512 bytes"):
            scan_corpus(corpus)


def test_a_long_id_is_refused_before_the_model_loads(
    tmp_path: Path, tiny_model: Path, no_model: None, capsys: pytest.CaptureFixture
) -> None:
    corpus = write_jsonl(tmp_path / "long.jsonl", [*TOY_DOCS, {"_id": "x" * 600, "text": "y"}])
    argv = ["index", str(corpus), "--out", str(tmp_path / "idx"), "--model", str(tiny_model)]
    code, message = _build_cli(capsys, *argv)
    assert code == 2 and "long.jsonl:7: document id 'xxx" in message
    assert "600 bytes" in message and "at most 511 bytes" in message
    assert not (tmp_path / "idx").exists()


def test_add_refuses_a_long_id_before_encoding_and_takes_511_bytes(
    tiny_model: Path, toy_corpus: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    out = build_index(
        toy_corpus,
        tmp_path / "idx",
        IndexSpec(model=ModelSpec(name=str(tiny_model), dtype="float32")),
    )
    longest = {"_id": "é" * 255 + "z", "title": "Longest", "text": "Protein folding."}
    extra = write_jsonl(tmp_path / "extra.jsonl", [longest, {"_id": "y" * 512, "text": "z"}])
    with monkeypatch.context() as patch:
        patch.setattr(Encoder, "encode_poolings", _fail)
        code, message = _build_cli(capsys, "add", str(out), str(extra))
    assert code == 2 and "extra.jsonl:2: document id 'yyy" in message and "512 bytes" in message
    assert _build_loads_and_searches(out) == len(TOY_DOCS)
    write_jsonl(extra, [longest])  # 511 bytes: the most a docstore key holds
    assert main(["-q", "add", str(out), str(extra), "--dtype", "float32"]) == 0
    searcher = Searcher.load(out)
    try:
        hit = searcher.search("Longest Protein folding.", k=1)[0]
        assert hit.id == longest["_id"] and len(hit.id.encode()) == 511
    finally:
        searcher.close()


def _fail(*args, **kwargs):
    raise AssertionError("documents were encoded")


# --- settings checked before the model loads -----------------------------------------


def test_an_unparseable_index_type_is_refused_before_the_scan(
    toy_corpus: Path, tmp_path: Path, no_model: None, monkeypatch, capsys
) -> None:
    monkeypatch.setattr("retriever.index.build.scan_corpus", _fail)
    argv = ["index", str(toy_corpus), "--out", str(tmp_path / "idx"), "--index-type", "Bogus12"]
    code, message = _build_cli(capsys, *argv)
    assert code == 2 and message.startswith("retriever: error: invalid --index-type 'Bogus12': ")
    assert "Flat, HNSWm, IVFn or a faiss.index_factory string" in message
    with pytest.raises(RetrieverError, match="invalid --index-type 'HNSW32,Bogus'"):
        build_index(
            toy_corpus, tmp_path / "idx", IndexSpec(dense=DenseSpec(index_type="HNSW32,Bogus"))
        )


def test_a_type_that_needs_another_dimension_is_refused_before_encoding(
    tiny_model: Path, toy_corpus: Path, tmp_path: Path, no_encoding: None
) -> None:
    # PQ7 parses (at a dimension 7 divides), but not at the 16 dimensions --tau 2 keeps.
    with pytest.raises(RetrieverError, match="invalid --index-type 'IVF2,PQ7' at dimension 16"):
        build_index(
            toy_corpus,
            tmp_path / "idx",
            IndexSpec(
                model=ModelSpec(name=str(tiny_model), dtype="float32"),
                filter=FilterSpec(tau=2),
                dense=DenseSpec(index_type="IVF2,PQ7"),
            ),
        )
    assert not (tmp_path / "idx").exists()


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["index", "{docs}", "--out", "{tmp}/o", "--chunk-size", "0"], "--chunk-size must be"),
        (["add", "{tmp}/o", "{docs}", "--chunk-size", "0"], "--chunk-size must be at least 1"),
        (["add", "{tmp}/o", "{docs}", "--limit", "0"], "--limit must be a positive number"),
        (["add", "{tmp}/o", "{tmp}/missing.jsonl"], "missing.jsonl does not exist"),
        (["search", "{tmp}/o", "fox", "--dense-weight", "2"], "--dense-weight must lie in [0, 1]"),
        (["search", "{tmp}/o", "fox", "--dense-weight", "nan"], "--dense-weight must lie in"),
        (["search", "{tmp}/o", "fox", "--sparse-query-tokens", "-1"], "--sparse-query-tokens"),
        (["eval", "{tmp}/o", "{tmp}", "--dense-weight", "-0.5"], "--dense-weight must lie in"),
    ],
)
def test_settings_are_refused_before_the_model_loads(
    argv: list[str], said: str, toy_corpus: Path, tmp_path: Path, no_model: None, capsys
) -> None:
    argv = [a.format(docs=toy_corpus, tmp=tmp_path) for a in argv]
    code, message = _build_cli(capsys, *argv)
    assert code == 2 and message.startswith("retriever: error: ") and said in message


def test_the_api_refuses_a_chunk_size_before_the_model_loads(
    toy_corpus: Path, tmp_path: Path, no_model: None
) -> None:
    with pytest.raises(RetrieverError, match="--chunk-size must be at least 1, got 0"):
        build_index(toy_corpus, tmp_path / "idx", None, BuildOptions(chunk_size=0))


# --- the system refuses a write ------------------------------------------------------


def test_a_full_disk_at_the_lock_is_one_line_and_keeps_the_old_index(
    tiny_model: Path, toy_corpus: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    out = build_index(
        toy_corpus,
        tmp_path / "idx",
        IndexSpec(model=ModelSpec(name=str(tiny_model), dtype="float32")),
    )
    first = tmp_path / "first"

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    common = ["--model", str(tiny_model), "--dtype", "float32", "--tau", "4"]
    with monkeypatch.context() as patch:
        patch.setattr(os, "pwrite", full)  # the writer lock's pid: a build's first write
        replace = _build_cli(
            capsys, "index", str(toy_corpus), "--out", str(out), "--overwrite", *common
        )
        new = _build_cli(capsys, "index", str(toy_corpus), "--out", str(first), *common)
    for (code, message), target in ((replace, out), (new, first)):
        assert code == 2 and "no space left on device" in message.lower()
        assert target.name in message
    assert not first.exists()
    assert _build_loads_and_searches(out) == len(TOY_DOCS)
    assert [p.name for p in generations_folder(out).iterdir()] == [out.resolve().name]


@pytest.mark.parametrize(
    ("error", "said"),
    [
        (
            OSError(errno.ENOSPC, "No space left on device", "/data/idx/x"),
            "no space left on device: /data/idx/x (free some space and rerun",
        ),
        (
            OSError(errno.EDQUOT, "Disk quota exceeded"),
            "disk quota exceeded: {out} (free some space or raise the quota",
        ),
        (
            OSError(errno.EACCES, "Permission denied", "/data"),
            "permission denied: /data (choose a folder you can write to",
        ),
        (
            OSError(errno.EROFS, "Read-only file system", "/mnt/ro/idx"),
            "read-only file system: /mnt/ro/idx (choose a folder on a writable file system)",
        ),
        (OSError(errno.ENAMETOOLONG, "File name too long", "/x"), "file name too long: /x"),
    ],
)
def test_system_errors_are_one_line(
    error: OSError, said: str, tmp_path: Path, monkeypatch, capsys
) -> None:
    def run(args):
        raise error

    monkeypatch.setattr("retriever.cli.index.run", run)
    out = tmp_path / "idx"
    code, message = _build_cli(capsys, "index", "docs.jsonl", "--out", str(out))
    assert code == 2 and message.startswith("retriever: error: " + said.format(out=out))


def test_a_closed_pipe_is_quiet(monkeypatch, capsys) -> None:
    def run(args):
        raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    monkeypatch.setattr("retriever.cli.search.run", run)
    assert main(["search", "idx", "fox"]) == 141
    assert capsys.readouterr().err == ""


# --- faults in the files and folders of an index ----------------------------------------
#
# Damaged filter and sparse parts, a generation removed by hand, folders the user cannot
# write, a lock held by another program, and an fsync that fails. Each ends in one line and
# a non-zero exit from the CLI (a RetrieverError in Python), and nothing that was published
# is lost.


FIX_PERMISSIONS = "permission denied; choose another --out or fix its permissions"


def _one_line(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str]:
    """Run the CLI quietly: its whole stderr must be one line, with no traceback."""
    code = main(["-q", *argv])
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("retriever: error: ")
    return code, lines[0]


def _single_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def _search(capsys: pytest.CaptureFixture, index: Path) -> tuple[int, str]:
    return _one_line(capsys, "search", str(index), "Vitamin D deficiency")


# --- a damaged filter.npy -------------------------------------------------------------


def _garbage(path: Path) -> None:
    path.write_bytes(b"\x00garbage, not numpy\xff" * 10)


def _truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


@pytest.mark.parametrize(
    "damage",
    [
        lambda p: np.save(p, np.ones((10, 10), dtype=np.float32)),
        lambda p: np.save(p, np.load(p).ravel()),
        lambda p: np.save(p, np.full_like(np.load(p), np.nan)),
        _garbage,
        _truncate,
        lambda p: p.write_bytes(b""),
    ],
    ids=["10x10", "1-D", "nan", "garbage", "truncated", "empty"],
)
def test_a_damaged_filter_matrix_is_one_line(
    damage, index_copy: Path, capsys: pytest.CaptureFixture
) -> None:
    matrix = index_copy / "filter.npy"
    damage(matrix)
    code, line = _search(capsys, index_copy)
    assert code == 2 and f"{matrix} is damaged (" in line and line.endswith("rebuild the index")
    with pytest.raises(RetrieverError) as raised:
        EmbedFilter.load(index_copy)
    assert "is damaged" in _single_line(raised)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("rows", "x"),
        ("model_dim", 3),
        ("spec", {"band": "nope"}),
        ("rows", [0, 100000]),  # a range past the hidden size (32)
        ("rows", [-1, 15]),
    ],
)
def test_a_damaged_filter_description_is_one_line(
    field: str, value: object, index_copy: Path, capsys: pytest.CaptureFixture
) -> None:
    spec = index_copy / "filter.json"
    spec.write_text(json.dumps({**json.loads(spec.read_text()), field: value}))
    code, line = _search(capsys, index_copy)
    assert code == 2 and "is damaged (" in line and line.endswith("rebuild the index")


# --- a damaged sparse index -----------------------------------------------------------


@pytest.fixture
def sparse_copy(tiny_model: Path, toy_corpus: Path, tmp_path: Path) -> Path:
    """A built index with a key-token part: its generation folder, free to damage."""
    sparse = SparseSpec(doc_tokens=30, query_tokens=5)
    return _build(tiny_model, toy_corpus, tmp_path / "sparse-idx", sparse=sparse).resolve()


def _other_postings(path: Path) -> None:
    import scipy.sparse as sp

    sp.save_npz(path, sp.random(7, 3, density=0.5, format="csr", dtype=np.float32))


def _npy_under_the_npz_name(path: Path) -> None:
    with path.open("wb") as stream:  # a path would get ".npy" appended
        np.save(stream, np.ones(3))


@pytest.mark.parametrize(
    ("part", "damage"),
    [
        ("postings.npz", _truncate),
        ("postings.npz", _garbage),
        ("postings.npz", _other_postings),
        ("postings.npz", _npy_under_the_npz_name),
        ("keys.npy", _truncate),
        ("keys.npy", lambda p: np.save(p, np.ones((2, 3), dtype=np.int64))),
        ("keys.npy", lambda p: np.save(p, np.arange(2, dtype=np.int64))),
        ("sparse.json", lambda p: p.write_text("{not json")),
    ],
    ids=[
        "truncated-postings",
        "garbage-postings",
        "other-shape-postings",
        "npy-postings",
        "truncated-keys",
        "2-D-keys",
        "too-few-keys",
        "bad-json",
    ],
)
def test_a_damaged_sparse_part_is_one_line(
    part: str, damage, sparse_copy: Path, capsys: pytest.CaptureFixture
) -> None:
    damage(sparse_copy / SPARSE_DIR / part)
    code, line = _search(capsys, sparse_copy)
    assert code == 2 and line.endswith("rebuild the index"), line
    assert "is damaged (" in line or "keys; rebuild the index" in line
    with pytest.raises(RetrieverError) as raised:
        KeyTokenIndex.load(sparse_copy / SPARSE_DIR)
    _single_line(raised)


# --- a generation removed by hand -----------------------------------------------------


def test_a_generation_removed_by_hand_is_one_line_and_a_rebuild_fixes_it(
    tiny_model: Path, toy_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = _build(tiny_model, toy_corpus, tmp_path / "idx")
    gone = out.resolve()
    shutil.rmtree(gone)
    code, line = _search(capsys, out)
    assert code == 2
    assert f"{out} points to a generation that no longer exists ({gone})" in line
    assert line.endswith("rebuild the index or restore the folder")
    with pytest.raises(RetrieverError, match="no longer exists") as raised:
        Searcher.load(out)
    _single_line(raised)
    # As the message says: a rebuild (no --overwrite needed: nothing is there to lose).
    argv = ["index", str(toy_corpus), "--out", str(out), "--model", str(tiny_model)]
    assert main(["-q", *argv, "--dtype", "float32"]) == 0
    assert _loads_and_searches(out) == 16


def test_a_current_generation_without_its_readers_file_still_loads(
    tiny_model: Path, toy_corpus: Path, tmp_path: Path
) -> None:
    out = _build(tiny_model, toy_corpus, tmp_path / "idx")
    (out.resolve() / generations_module.READERS_FILE).unlink()
    assert _loads_and_searches(out) == 16


# --- a folder the user cannot write ---------------------------------------------------


def _make_read_only(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Refuse writes in ``folder``: by its mode, or, for root (whom modes do not stop), by
    refusing every open for writing there, as the kernel would."""
    if os.geteuid() != 0:
        folder.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)
        return
    real_open = os.open
    writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT

    def refusing_open(path, flags, *args, **kwargs):
        if flags & writing and Path(path).absolute().parent == folder:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing_open)


@pytest.mark.parametrize("command", ["first build", "overwrite", "delete"])
def test_a_folder_the_user_cannot_write_is_one_line(
    command: str,
    tiny_model: Path,
    toy_corpus: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    folder = tmp_path / "read-only"
    folder.mkdir()
    out = folder / "idx"
    if command != "first build":
        _build(tiny_model, toy_corpus, out, tau=2)
    before = sorted(p.name for p in folder.iterdir())
    _make_read_only(folder, monkeypatch)
    build = ["index", str(toy_corpus), "--out", str(out), "--model", str(tiny_model)]
    argv = {
        "first build": build,
        "overwrite": [*build, "--tau", "4", "--overwrite"],
        "delete": ["delete", str(out), "d1"],
    }[command]
    try:
        code, line = _one_line(capsys, *argv)
        with pytest.raises(RetrieverError, match="permission denied") as raised:
            with writer_lock(out):
                pass
        _single_line(raised)
    finally:
        folder.chmod(0o755)
        monkeypatch.undo()
    assert code == 2 and "cannot write " in line and line.endswith(FIX_PERMISSIONS), line
    assert sorted(p.name for p in folder.iterdir()) == before
    if command != "first build":
        assert _loads_and_searches(out) == 16


# --- a lock held by another program -----------------------------------------------------

_HOLD = """
import fcntl, os, sys
handle = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(handle, fcntl.LOCK_EX)  # the file keeps whatever pid it held: stale
print("held", flush=True)
sys.stdin.read()
"""


@pytest.mark.parametrize("recorded", ["999999999\n", "", "not a pid\n"])
def test_a_lock_held_by_another_program_names_no_stale_pid(
    recorded: str,
    tiny_model: Path,
    toy_corpus: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    out = tmp_path / "idx"
    lock_path(out).write_text(recorded)
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(lock_path(out))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        argv = ["index", str(toy_corpus), "--out", str(out), "--model", str(tiny_model)]
        code, line = _one_line(capsys, *argv)
    finally:
        holder.stdin.close()
        holder.wait()
    assert code == 2 and "wait for it to finish" in line and not out.exists()
    assert "999999999" not in line and "not a pid" not in line
    if f"another writer (pid {holder.pid})" not in line:  # the kernel did not say who
        assert f"another process holds the writer lock of {out}" in line


def test_a_recorded_pid_is_believed_only_while_it_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Where the kernel's list of locks says nothing (not Linux, or not visible).
    monkeypatch.setattr(generations_module, "_kernel_holders", lambda _: set())
    lock = tmp_path / "lock"
    handle = os.open(lock, os.O_RDWR | os.O_CREAT)
    try:
        for recorded, believed in [(f"{os.getpid()}\n", os.getpid()), ("999999999\n", None)]:
            os.ftruncate(handle, 0)
            os.pwrite(handle, recorded.encode(), 0)
            assert generations_module._lock_holder(handle) == believed
    finally:
        os.close(handle)


# --- an fsync that fails --------------------------------------------------------------


def _failing_fsync(monkeypatch: pytest.MonkeyPatch, fails: Callable[[str], bool]) -> None:
    """Make fsync fail with EIO on the files and folders for which ``fails(path)``."""
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc/self/fd to tell which file an fsync is for")
    real_fsync = os.fsync

    def fsync(handle: int) -> None:
        if fails(os.readlink(f"/proc/self/fd/{handle}")):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_fsync(handle)

    monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.parametrize(
    ("command", "where"),
    [
        ("overwrite", "a staging file"),
        ("add", "a staging file"),
        ("delete", "a staging file"),
        ("overwrite", "the generations folder"),
    ],
)
def test_a_failed_fsync_publishes_nothing(
    command: str,
    where: str,
    tiny_model: Path,
    toy_corpus: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    out = _build(tiny_model, toy_corpus, tmp_path / "idx", tau=2)
    current = out.resolve()
    folder = str(generations_folder(out).resolve())
    if where == "a staging file":
        _failing_fsync(monkeypatch, lambda path: ".partial/" in path)
    else:  # after the staging folder is renamed complete, before the link is swapped
        _failing_fsync(monkeypatch, lambda path: path == folder)
    new = write_jsonl(tmp_path / "new.jsonl", [{"_id": "n1", "text": "Entirely new text."}])
    build = ["index", str(toy_corpus), "--out", str(out), "--model", str(tiny_model)]
    argv = {
        "overwrite": [*build, "--tau", "4", "--overwrite"],
        "add": ["add", str(out), str(new)],
        "delete": ["delete", str(out), "d1"],
    }[command]
    code, line = _one_line(capsys, *argv)
    monkeypatch.undo()
    assert code == 2 and "cannot flush " in line and "(errno 5, EIO)" in line, line
    assert "nothing was published and the previous index, if any, is intact" in line
    # The old generation is still current and whole, and nothing half-written is left.
    assert out.resolve() == current
    assert [p.name for p in generations_folder(out).iterdir()] == [current.name]
    assert _loads_and_searches(out) == 16
    searcher = Searcher.load(out)
    assert len(searcher) == len(toy_corpus.read_text().splitlines())
    searcher.close()


# --- search faults (issue 19) -----------------------------------------------------------
#
# An emptied index, a closed searcher, search parameters below 1, ids that break a
# plain-text layout, and very long ids in messages. Each ends in a correct answer or one
# line on stderr (RetrieverError in Python), and nothing is lost.


ALL_METHODS = ("dense", "sparse", "bm25", "dense+sparse", "dense+bm25")
ODD_DOCS = [
    {"_id": "line\nbreak", "title": "Two\nlines", "text": "A fox with a newline in its id."},
    {"_id": "tab\tid", "title": "Tabbed", "text": "A dog with a tab in its id."},
]


def _search_build(model: Path, docs: list[dict], out: Path) -> Path:
    return build_index(
        write_jsonl(out.with_suffix(".jsonl"), docs),
        out,
        IndexSpec(
            model=ModelSpec(name=str(model), dtype="float32"),
            sparse=SparseSpec(doc_tokens=30, query_tokens=5),
            bm25=True,
        ),
    )


def _search_cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    """Exit code, stdout, and stderr's one line (asserted to be at most one)."""
    code = main(["-q", *argv])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert "Traceback" not in captured.err and len(lines) <= 1, captured.err
    return code, captured.out, lines[0] if lines else ""


def _count(index: Path) -> int:
    return json.loads((index / "manifest.json").read_text())["documents"]["count"]


@pytest.fixture(scope="module")
def odd_index(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _search_build(tiny_model, TOY_DOCS + ODD_DOCS, tmp_path_factory.mktemp("odd") / "idx")


@pytest.fixture(scope="module")
def emptied(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    index = _search_build(tiny_model, TOY_DOCS, tmp_path_factory.mktemp("emptied") / "idx")
    ids = [doc["_id"] for doc in TOY_DOCS]
    assert main(["-q", "delete", str(index), *ids]) == 0
    return index


# --- an index whose every document was deleted ------------------------------------------


def test_an_empty_bm25_part_searches_to_nothing_and_round_trips(tmp_path: Path) -> None:
    empty = BM25Builder().finish()
    assert empty.num_documents == 0
    scores, keys = empty.search(["fox", "bone"], k=5)
    assert scores.shape == keys.shape == (2, 0)
    again = BM25Index.load(empty.save(tmp_path / "bm25"))
    assert again.num_documents == 0 and again.search(["fox"], k=3)[1].shape == (1, 0)
    with pytest.raises(RetrieverError, match="empty collection"):
        BM25Index.build([])  # a first build of nothing is still a mistake


def test_deleting_every_document_with_bm25_leaves_a_valid_empty_index(emptied: Path) -> None:
    manifest = json.loads((emptied / "manifest.json").read_text())
    assert manifest["documents"]["count"] == 0
    assert all(manifest[part]["count"] == 0 for part in ("dense", "sparse", "bm25"))
    assert (emptied / BM25_DIR).is_dir()
    searcher = Searcher.load(emptied)
    try:
        assert len(searcher) == 0
        for method in ALL_METHODS:
            assert len(searcher.search("fox", k=5, method=method)) == 0, method
            run = searcher.batch_search({"a": "fox", "b": "bone"}, k=5, method=method)
            assert run.to_beir() == {"a": {}, "b": {}}, method
            assert [len(r) for r in searcher.rank(["x", "y"], 3, method=method).rankings] == [0, 0]
        scores, keys = searcher.search_vectors(np.zeros((2, searcher.filter.dim), np.float32), 4)
        assert scores.shape == keys.shape == (2, 0)
        with pytest.raises(RetrieverError, match="k must be at least 1"):
            searcher.search("fox", k=0)  # the caller's k is still checked
    finally:
        searcher.close()


@pytest.mark.parametrize("method", ["dense", "bm25", "dense+sparse"])
def test_an_empty_index_answers_no_hits_in_the_cli(
    emptied: Path, method: str, capsys: pytest.CaptureFixture
) -> None:
    code, out, err = _search_cli(
        capsys, "search", str(emptied), "fox", "-k", "5", "--method", method
    )
    assert code == 0 and err == ""
    assert out.strip() == f"no hits: {emptied} holds no documents"
    code, out, err = _search_cli(
        capsys, "search", str(emptied), "fox", "--json", "--method", method
    )
    assert code == 0 and json.loads(out) == []


def test_an_emptied_index_takes_new_documents(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    index = _search_build(tiny_model, TOY_DOCS[:3], tmp_path / "idx")
    assert delete_documents(index, [doc["_id"] for doc in TOY_DOCS[:3]]) == 3
    new = synthetic_docs(5, seed=4, prefix="n")
    code, _, err = _search_cli(
        capsys, "add", str(index), str(write_jsonl(tmp_path / "n.jsonl", new))
    )
    assert code == 0 and err == ""
    assert _count(index) == 5
    new_ids = {doc["_id"] for doc in new}
    searcher = Searcher.load(index)
    try:
        for method in ("dense", "sparse", "dense+bm25"):  # exactly the new documents
            assert set(searcher.search("fox", k=10, method=method).ids) <= new_ids, method
        assert set(searcher.search("fox", k=10).ids) == new_ids
        for doc in new:
            text = f"{doc['title']} {doc['text']}"
            assert doc["_id"] in searcher.search(text, k=5, method="bm25").ids
    finally:
        searcher.close()


# --- a closed searcher ------------------------------------------------------------------


def test_every_search_of_a_closed_searcher_is_one_line(odd_index: Path) -> None:
    searcher = Searcher.load(odd_index)
    searcher.close()
    searcher.close()  # twice is harmless
    dim = searcher.filter.dim
    calls = {
        "search": lambda: searcher.search("fox"),
        "batch_search": lambda: searcher.batch_search(["fox"]),
        "rank": lambda: searcher.rank(["fox"], 3, method="bm25"),
        "retrieve": lambda: searcher.retrieve("bm25", ["fox"], None, 3),
        "search_vectors": lambda: searcher.search_vectors(np.zeros((1, dim), np.float32), 3),
        "encode_queries": lambda: searcher.encode_queries(["fox"]),
        "explain": lambda: searcher.explain("fox"),
        "set_search_params": lambda: searcher.set_search_params(nprobe=2),
    }
    for name, call in calls.items():
        with pytest.raises(RetrieverError, match="this searcher is closed") as caught:
            call()
        assert "\n" not in str(caught.value), name


# --- search parameters below 1 ----------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"nprobe": 0}, "nprobe must be at least 1, got 0"),
        ({"ef_search": 0}, "--ef-search must be at least 1, got 0"),
        ({"rescore": -2}, "rescore must be at least 1, got -2"),
        ({"nprobe": 2.5}, "nprobe must be a whole number, got 2.5"),
    ],
)
def test_search_params_below_1_are_refused_before_the_model_loads(
    odd_index: Path, given: dict, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as patch:
        patch.setattr("retriever.encode.encoder.load_model", lambda *a, **k: 1 / 0)
        with pytest.raises(RetrieverError, match=message):
            Searcher.load(odd_index, search=SearchParams(**given))
    searcher = Searcher.load(odd_index)
    try:
        with pytest.raises(RetrieverError, match=message):
            searcher.set_search_params(**given)
    finally:
        searcher.close()


@pytest.mark.parametrize("flag", ["--nprobe", "--ef-search", "--rescore"])
def test_a_zero_search_param_is_one_line_in_the_cli(
    odd_index: Path, flag: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr("retriever.encode.encoder.load_model", lambda *a, **k: 1 / 0)
    code, out, err = _search_cli(capsys, "search", str(odd_index), "fox", flag, "0")
    assert code == 2 and out == ""
    assert err == f"retriever: error: {flag} must be at least 1, got 0"


# --- ids in output and in messages ------------------------------------------------------


def test_plain_text_output_escapes_ids_and_json_keeps_them(
    odd_index: Path, capsys: pytest.CaptureFixture
) -> None:
    count = len(TOY_DOCS + ODD_DOCS)
    code, out, _ = _search_cli(capsys, "search", str(odd_index), "a fox", "-k", str(count))
    assert code == 0
    lines = out.splitlines()
    # Each hit is its header line and its snippet line, nothing broken in between.
    headers = [line for line in lines if not line.startswith("     ")]
    assert len(headers) == count and len(lines) == 2 * count
    assert all(line.split(".")[0].strip().isdigit() for line in headers)
    assert any("  'line\\nbreak'  Two lines" in line for line in headers)
    assert any("  'tab\\tid'  Tabbed" in line for line in headers)
    assert any("  d1  Vitamin D" in line for line in headers)  # plain ids stay as they are
    code, out, _ = _search_cli(
        capsys, "search", str(odd_index), "a fox", "-k", str(count), "--json"
    )
    assert {hit["id"] for hit in json.loads(out)} >= {"line\nbreak", "tab\tid"}


def test_a_10000_character_unknown_id_is_shortened_and_nothing_is_deleted(
    odd_index: Path, capsys: pytest.CaptureFixture
) -> None:
    long_id = "x" * 10_000
    code, _, err = _search_cli(capsys, "delete", str(odd_index), "d1", long_id)
    assert code == 2 and "holds no document with id" in err
    assert f"'{'x' * 60}'… (10000 characters)" in err and len(err) < 300
    assert "nothing was deleted" in err
    assert _count(odd_index) == len(TOY_DOCS + ODD_DOCS)
    with pytest.raises(RetrieverError, match=r"\(10001 characters\)"):
        delete_documents(odd_index, [long_id + "\udce9"])  # not even UTF-8: still one line
    searcher = Searcher.load(odd_index)
    try:
        with pytest.raises(RetrieverError, match=r"given twice") as caught:
            searcher.rank(["a", "b"], 1, method="bm25", query_ids=[long_id, long_id])
        assert len(str(caught.value)) < 200
    finally:
        searcher.close()


# --- no output inside an index ----------------------------------------------------------


def _tree(folder: Path) -> dict[str, int]:
    """Every file under ``folder`` (links followed) with its size: what must not change."""
    return {
        str(path.relative_to(folder)): path.stat().st_size
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.mark.parametrize(
    "command",
    [
        ["index", "{corpus}", "--out", "{inside}", "--model", "{model}"],
        ["index", "{corpus}", "--out", "{other}", "--model", "{model}", "--store", "{inside}"],
        ["encode", "{corpus}", "--out", "{inside}", "--model", "{model}"],
        ["export", "{index}", "{inside}"],
        ["add", "{index}", "{corpus}", "--store", "{inside}"],
        ["index", "{corpus}", "--out", "{generations}/new", "--model", "{model}"],
    ],
    ids=["index-out", "index-store", "encode-out", "export", "add-store", "generations-folder"],
)
def test_nothing_is_written_inside_an_index(
    command: list[str], tiny_model: Path, toy_corpus: Path, tmp_path: Path, capsys
) -> None:
    index = _build(tiny_model, toy_corpus, tmp_path / "idx")
    generations = index.parent / f".{index.name}.generations"
    before = _tree(generations)
    values = {
        "corpus": str(toy_corpus),
        "model": str(tiny_model),
        "index": str(index),
        "inside": str(index / "inner"),
        "other": str(tmp_path / "other"),
        "generations": str(generations),
    }
    code, line = _one_line(capsys, *(part.format(**values) for part in command))
    assert code == 2 and f"lies inside the index {index}" in line
    assert _tree(generations) == before and not (tmp_path / "other").exists()
    assert _loads_and_searches(index) > 0


# --- export refuses what search refuses -------------------------------------------------


def _pickle_model(tiny_model: Path, folder: Path, *, keep_safetensors: bool) -> Path:
    """The tiny model with pickle weights (pytorch_model.bin) beside or instead of its
    safetensors, configs and tokenizer copied."""
    import torch
    from safetensors.torch import load_file

    shutil.copytree(tiny_model, folder)
    weights = folder / "model.safetensors"
    torch.save(load_file(weights), folder / "pytorch_model.bin")
    if not keep_safetensors:
        weights.unlink()
    return folder


@pytest.mark.parametrize("keep_safetensors", [False, True], ids=["pickle-only", "both"])
def test_export_refuses_a_pickle_model_with_a_forged_hash(
    keep_safetensors: bool, tiny_model: Path, index_copy: Path, tmp_path: Path, capsys
) -> None:
    from retriever.encode.models import weights_sha256

    model = _pickle_model(tiny_model, tmp_path / "pickled", keep_safetensors=keep_safetensors)
    manifest = _manifest(index_copy)
    manifest["spec"]["model"]["name"] = str(model)
    manifest["model"]["weights_sha256"] = weights_sha256(model)
    (index_copy / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "export"
    code, line = _one_line(capsys, "export", str(index_copy), str(out))
    assert code == 2 and "pytorch_model.bin" in line and "safetensors" in line
    assert not out.exists() and not list(tmp_path.glob(".export.partial-*"))
    if not keep_safetensors:
        code, line = _search(capsys, index_copy)  # search refuses the same index
        assert code == 2 and "safetensors" in line


def test_export_copies_only_weights_configs_and_tokenizer_files(
    tiny_model: Path, toy_corpus: Path, tmp_path: Path
) -> None:
    from retriever.export.st_folder import export_index

    model = Path(shutil.copytree(tiny_model, tmp_path / "model"))
    for stray in ("modeling_custom.py", "training_args.pkl", "notes.md"):
        (model / stray).write_text("not for an export")
    index = _build(model, toy_corpus, tmp_path / "idx")
    out = export_index(index, tmp_path / "export")
    copied = sorted(p.name for p in (out / "model").iterdir())
    assert copied == sorted(p.name for p in tiny_model.iterdir())


def test_an_old_generation_that_cannot_be_removed_is_said_in_one_line(
    tiny_model: Path, toy_corpus: Path, tmp_path: Path, monkeypatch, caplog
) -> None:
    index = _build(tiny_model, toy_corpus, tmp_path / "idx")
    old = index.resolve()

    real_rmtree = shutil.rmtree

    def refused_rmtree(path, *args, onerror=None, **kwargs):  # as a read-only mount refuses
        if Path(path) != old:
            return real_rmtree(path, *args, onerror=onerror, **kwargs)
        error = OSError(errno.EROFS, os.strerror(errno.EROFS))
        onerror(os.unlink, str(old / "index.faiss"), (OSError, error, None))

    monkeypatch.setattr(generations_module.shutil, "rmtree", refused_rmtree)
    with caplog.at_level("WARNING", logger="retriever"):
        assert main(["delete", str(index), "d2"]) == 0
    lines = [record.getMessage() for record in caplog.records]
    said = [line for line in lines if "could not remove the old generation" in line]
    assert len(said) == 1 and "\n" not in said[0]
    assert str(old) in said[0] and "remove it by hand" in said[0]
    assert old.is_dir() and index.resolve() != old
    assert _loads_and_searches(index) > 0


# --- messages that name the real cause ------------------------------------------------


def test_a_dangling_link_is_named_by_add_delete_and_info(
    tiny_model: Path, toy_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = _build(tiny_model, toy_corpus, tmp_path / "idx")
    gone = out.resolve()
    shutil.rmtree(gone)
    said = f"{out} points to a generation that no longer exists ({gone})"
    for argv in (["add", str(out), str(toy_corpus)], ["delete", str(out), "a"], ["info", str(out)]):
        code, line = _cli(capsys, *argv)
        assert code == 2 and said in line, argv
    assert not gone.exists() and out.is_symlink()  # nothing else touched


def test_a_link_to_a_folder_that_is_not_an_index_is_named(
    tiny_model: Path, toy_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    out = tmp_path / "idx"
    out.symlink_to(mine)
    argv = ["index", str(toy_corpus), "--out", str(out), "--model", str(tiny_model)]
    for extra in ([], ["--overwrite"]):
        code, line = _cli(capsys, *argv, *extra)
        assert code == 2 and f"{out} is a link to {mine}, which is not a retriever index" in line
    code, line = _cli(capsys, "delete", str(out), "a")
    assert code == 2 and f"{out} is a link to {mine}, not an index built by" in line
    assert (mine / "notes.txt").read_text() == "keep" and os.readlink(out) == str(mine)


def test_a_manifest_filter_that_is_not_filter_json_is_one_line(
    index_copy: Path, capsys: pytest.CaptureFixture
) -> None:
    manifest = _manifest(index_copy)
    manifest["filter"]["rows"] = [0, 100000]  # the manifest's copy, not filter.json
    _write_json(index_copy / "manifest.json", manifest)
    code, line = _search(capsys, index_copy)
    assert code == 2 and "its manifest describes another filter than filter.json" in line


# --- every part proves it belongs: checksums and `retriever check` --------------------


def _other_index(model: Path, tmp_path: Path, name: str, **settings: object) -> Path:
    """A second index of the same shape over other documents: its parts are well formed."""
    docs = [
        {**doc, "_id": f"o{n}", "text": f"Other {doc['text']}"} for n, doc in enumerate(TOY_DOCS)
    ]
    return _build(model, write_jsonl(tmp_path / f"{name}.jsonl", docs), tmp_path / name, **settings)


@pytest.mark.parametrize("command", ["search", "add", "delete"])
def test_a_well_formed_part_from_another_index_is_refused(
    command: str, index_copy: Path, tiny_model: Path, tmp_path: Path, capsys
) -> None:
    other = _other_index(tiny_model, tmp_path, "other")
    assert (other / "index.faiss").stat().st_size == (index_copy / "index.faiss").stat().st_size
    shutil.copyfile(other / "index.faiss", index_copy / "index.faiss")
    link = tmp_path / "idx"  # index_copy is its current generation
    argv = {
        "search": ["search", str(link), "Vitamin D"],
        "add": [
            "add",
            str(link),
            str(write_jsonl(tmp_path / "n.jsonl", [{"_id": "n", "text": "x"}])),
        ],
        "delete": ["delete", str(link), "d1"],
    }[command]
    code, line = _one_line(capsys, *argv)
    assert code == 2 and f"{index_copy / 'index.faiss'} does not match its checksum" in line
    assert "retriever check" in line
    assert _manifest(index_copy)["documents"]["count"] == 6  # nothing was changed


def test_rescore_keys_of_other_documents_are_refused(tiny_model: Path, tmp_path: Path, capsys):
    corpus = write_jsonl(tmp_path / "docs.jsonl", TOY_DOCS)
    spec = IndexSpec(
        model=ModelSpec(name=str(tiny_model), dtype="float32"),
        dense=DenseSpec(storage="int8", search=SearchParams(rescore=2)),
    )
    out = build_index(corpus, tmp_path / "idx", spec)
    keys = out / "rescore_keys.npy"
    np.save(keys, np.load(keys) + 100)  # same shape and size, other keys
    code, line = _search(capsys, out)
    assert code == 2 and f"{out.resolve() / 'rescore_keys.npy'} does not match" in line


def _check(capsys, index: Path) -> tuple[int, list[str]]:
    code = main(["-q", "check", str(index)])
    return code, capsys.readouterr().out.strip().splitlines()


@pytest.mark.parametrize(
    ("damage", "named"),
    [
        (lambda f: os.truncate(f / "docstore" / "data.mdb", 10_000), "docstore/data.mdb"),
        (_damage_docstore_record, "docstore/data.mdb"),
        (lambda f: (f / "index.faiss").unlink(), "index.faiss is missing"),
        (lambda f: np.save(f / "filter.npy", np.load(f / "filter.npy") * 2), "filter.npy"),
        (lambda f: (f / "stray.txt").write_text("x"), "stray.txt is not a file this generation"),
        (
            lambda f: shutil.copyfile(f.parent.parent / "other" / "index.faiss", f / "index.faiss"),
            "index.faiss does not match its checksum",
        ),
    ],
    ids=["truncated-docstore", "docstore-record", "no-faiss", "filter", "stray", "foreign-faiss"],
)
def test_check_names_every_damaged_part(
    damage, named: str, index_copy: Path, tiny_model: Path, tmp_path: Path, capsys
) -> None:
    _other_index(tiny_model, tmp_path, "other")
    code, lines = _check(capsys, tmp_path / "idx")
    assert code == 0 and lines[-1].endswith("files and every part check out")
    damage(index_copy)
    code, lines = _check(capsys, tmp_path / "idx")
    assert code == 1 and lines and any(named in line for line in lines), lines


def test_check_compares_the_parts_keys_with_the_docstore(
    tiny_model: Path, toy_corpus: Path, tmp_path: Path, capsys
) -> None:
    """A part whose checksum was recorded anew (a manifest edited to match) is still caught
    by the parts' keys; --json gives the same problems."""
    from retriever.index.integrity import file_records

    out = _build(tiny_model, toy_corpus, tmp_path / "idx", bm25=True).resolve()
    bm25 = BM25Index.load(out / BM25_DIR)
    np.save(out / BM25_DIR / "keys.npy", bm25.keys + 1)
    manifest = _manifest(out)
    manifest["files"] = file_records(out)
    _write_json(out / "manifest.json", manifest)
    code, lines = _check(capsys, tmp_path / "idx")
    assert code == 1 and lines == ["the BM25 index holds other document keys than the docstore"]
    assert main(["-q", "check", str(tmp_path / "idx"), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["problems"] == lines


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["search", "{idx}", "fox", "--method", "bm25"], "cannot answer 'bm25'"),
        (["eval", "{idx}", "{scifact}", "--methods", "dense,sparse"], "cannot answer 'sparse'"),
        (["add", "{idx}", "{dup}"], "duplicate document id 'n'"),
        (["add", "{idx}", "{empty}"], "holds no documents"),
        (["add", "{idx}", "{docs}"], "6 of the documents are already in"),
    ],
    ids=["search-method", "eval-methods", "add-duplicate-id", "add-empty", "add-present"],
)
def test_add_search_and_eval_refuse_before_the_model_loads(
    argv: list[str],
    said: str,
    tiny_model: Path,
    toy_corpus: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = _build(tiny_model, toy_corpus, tmp_path / "idx")
    dup = write_jsonl(
        tmp_path / "dup.jsonl", [{"_id": "n", "text": "a"}, {"_id": "n", "text": "b"}]
    )
    (tmp_path / "empty.jsonl").write_text("")
    monkeypatch.setattr("retriever.encode.encoder.load_model", lambda *a, **k: 1 / 0)
    paths = {"idx": out, "dup": dup, "empty": tmp_path / "empty.jsonl", "docs": toy_corpus}
    paths["scifact"] = QUICKSTART
    code, line = _one_line(capsys, *[a.format(**paths) for a in argv])
    assert code == 2 and said in line


def test_a_disk_a_little_smaller_than_the_build_needs_is_refused_before_encoding(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A tmpfs a few pages smaller than what the build writes (measured on a roomy disk):
    between the estimate that left out the filter, the sparse pointers and the small files
    and the real need, so that build started and failed at write time. Now it is refused
    before anything is written."""
    corpus = write_jsonl(tmp_path / "docs.jsonl", synthetic_docs(200))
    argv = ["index", str(corpus), "--model", str(tiny_model), "--dtype", "float32"]
    # Few sparse tokens, so the old per-document terms stay small (that estimate came to
    # about 73 KB of index here, where the build writes about 135 KB).
    argv += ["--max-length", "64", "--sparse", "--sparse-doc-tokens", "8"]
    roomy = tmp_path / "roomy"
    assert main(["-q", *argv, "--out", str(roomy / "idx"), "--store", str(roomy / "store")]) == 0
    need = sum(p.stat().st_blocks * 512 for p in roomy.rglob("*") if p.is_file())
    with _tmpfs(tmp_path, str((need // 4096 - 4) * 4096)) as disk:
        code, line = _build_cli(
            capsys, *argv, "--out", str(disk / "idx"), "--store", str(disk / "store")
        )
        assert code == 2 and "not enough disk" in line
        assert list(disk.iterdir()) == []


@pytest.mark.parametrize(
    "damaged",
    ["sparse/keys.npy", "sparse/postings.npz", "bm25/keys.npy", "rescore_codes.npy"],
)
def test_check_names_each_part_of_a_full_index(
    damaged: str, tiny_model: Path, toy_corpus: Path, tmp_path: Path, capsys
) -> None:
    spec = IndexSpec(
        model=ModelSpec(name=str(tiny_model), dtype="float32"),
        dense=DenseSpec(storage="int8", search=SearchParams(rescore=2)),
        sparse=SparseSpec(doc_tokens=30, query_tokens=5),
        bm25=True,
    )
    out = build_index(toy_corpus, tmp_path / "idx", spec)
    assert _check(capsys, out)[0] == 0
    path = out.resolve() / damaged
    path.write_bytes(path.read_bytes()[:-1] + bytes([path.read_bytes()[-1] ^ 1]))
    code, lines = _check(capsys, out)
    assert code == 1 and lines == [
        f"{path} does not match its checksum: it was changed or replaced"
    ]
    (out.resolve() / "manifest.json").write_text("{not json")
    code, line = _one_line(capsys, "check", str(out))
    assert code == 2 and "manifest.json" in line
