"""Fault injection: concurrent writers, readers across swaps, kill -9, full disks, corrupt
parts, invalid text, crafted manifests. Every cell checks the exit code, the one-line
message, and that nothing was lost or half-written.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lmdb
import numpy as np
import pytest

from retriever import FilterSpec, RetrieverError, Searcher, build_index
from retriever import models as models_module
from retriever.cli import main
from retriever.generations import generations_folder, writer_lock
from tests.conftest import TOY_DOCS, synthetic_docs, write_jsonl

ROOT = Path(__file__).resolve().parents[1]


def _cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    return code, (lines[-1] if lines else "")


def _build(model: Path, corpus: Path, out: Path, **kwargs) -> Path:
    return build_index(corpus, out, model=str(model), dtype="float32", **kwargs)


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


def test_a_second_writer_fails_at_once_naming_the_holder(
    tiny_model: Path, toy_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import threading

    out = tmp_path / "idx"
    holding, done = threading.Event(), threading.Event()

    def other_writer() -> None:  # another thread stands for another process
        with writer_lock(out):
            holding.set()
            done.wait(600)  # released by the test as soon as its refused build returns

    thread = threading.Thread(target=other_writer)
    thread.start()
    assert holding.wait(600), "the other writer never took the lock"
    try:
        code, message = _cli(
            capsys, "index", str(toy_corpus), "--out", str(out), "--model", str(tiny_model)
        )
    finally:
        done.set()
        thread.join()
    assert code == 2 and f"another writer (pid {os.getpid()})" in message
    assert not out.exists()


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
    out = _build(tiny_model, toy_corpus, tmp_path / "idx", filter_spec=FilterSpec(tau=2))
    old = out.resolve()
    reader = Searcher.load(out)
    _build(tiny_model, toy_corpus, out, filter_spec=FilterSpec(tau=4), overwrite=True)
    assert out.resolve() != old and old.is_dir()  # kept: a reader holds it
    hits = reader.search("Foxes The quick brown fox jumps over the lazy dog.", k=2)
    assert hits[0].id == "d2" and reader.filter.dim == reader.index.dim == 16
    assert _loads_and_searches(out) == 8
    reader.close()
    _build(tiny_model, toy_corpus, out, filter_spec=FilterSpec(tau=8), overwrite=True)
    assert not old.exists()  # unread now: deleted by the next writer
    assert len(list(generations_folder(out).iterdir())) == 1


def test_a_swap_in_the_middle_of_a_load_is_not_seen(
    tiny_model: Path, toy_corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import retriever.searcher as searcher_module

    out = _build(tiny_model, toy_corpus, tmp_path / "idx", filter_spec=FilterSpec(tau=2))
    real = searcher_module.load_encoder_for

    def swap_then_load(*args, **kwargs):
        # The model loads for seconds: another process publishes a new generation meanwhile.
        _build(tiny_model, toy_corpus, out, filter_spec=FilterSpec(tau=4), overwrite=True)
        return real(*args, **kwargs)

    monkeypatch.setattr(searcher_module, "load_encoder_for", swap_then_load)
    searcher = Searcher.load(out)
    assert searcher.manifest["filter"]["dim"] == searcher.filter.dim == searcher.index.dim == 16
    assert searcher.search("Vitamin D Vitamin D deficiency is associated with bone disease.")[
        0
    ].id == ("d1")


# --- kill -9 at every step of a build and of an overwrite ---------------------------


_KILL_AT = """
import os, sys
import retriever.generations as generations
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
    import retriever.backends as backends
    backends.save_faiss_index = die
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize(
    "step", ["while-writing-parts", "before-rename", "between-rename-and-link", "after-link"]
)
def test_kill_9_at_each_step_of_an_overwrite(
    step: str, tiny_model: Path, toy_corpus: Path, tmp_path: Path
) -> None:
    out = _build(tiny_model, toy_corpus, tmp_path / "idx", filter_spec=FilterSpec(tau=2))
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
    _build(tiny_model, toy_corpus, out, filter_spec=FilterSpec(tau=8), overwrite=True)
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
        ("retriever.store.np.save", OSError(28, "No space left on device")),
        (
            "retriever.backends.save_faiss_index",
            RuntimeError("write error (No space left on device)"),
        ),
        ("retriever.docstore.DocStoreWriter.put", lmdb.DiskError("MDB_DISK_FULL")),
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
    out = _build(tiny_model, toy_corpus, tmp_path / "idx", filter_spec=FilterSpec(tau=2))

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


def test_a_really_full_tmpfs(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; the injected cells above cover the rest")
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)]).returncode:
        pytest.skip("this sandbox cannot mount a tmpfs")
    try:
        small = write_jsonl(tmp_path / "small.jsonl", TOY_DOCS)
        out = _build(tiny_model, small, disk / "idx")
        big = [{"_id": f"b{i}", "text": "bone disease " * 4000} for i in range(60)]
        corpus = write_jsonl(tmp_path / "big.jsonl", big)
        code, message = _cli(
            capsys,
            "index",
            str(corpus),
            "--out",
            str(out),
            "--model",
            str(tiny_model),
            "--dtype",
            "float32",
            "--max-length",
            "32",
            "--overwrite",
        )
        assert code == 2 and f"no space left on the device while writing {disk}" in message
        assert _loads_and_searches(out) == 16
    finally:
        subprocess.run(["umount", str(disk)], check=True)


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
        (_damage_docstore_record, "damaged document record"),
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
    from retriever.index import build_faiss_index, save_faiss_index

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
    manifest["model"]["name"] = str(other_tiny_model)  # hash left as the real model's
    _write_json(index_copy / "manifest.json", manifest)

    def never(*args, **kwargs):
        raise AssertionError("weights were loaded before the hash was checked")

    monkeypatch.setattr("retriever.encoder.load_model", never)
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

    monkeypatch.setattr("retriever.encoder.load_model", never)
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
    monkeypatch.setattr("retriever.encoder.load_model", lambda *a, **k: 1 / 0)
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
