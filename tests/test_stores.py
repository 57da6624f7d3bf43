"""`retriever stores`: listing embedding stores with the indexes built from them, and
removing stores; the manifest's record of the store's size."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest

from retriever import EncoderConfig, Searcher, build_index
from retriever.cli import main
from retriever.core.sizes import folder_bytes
from retriever.core.spec import IndexSpec, ModelSpec
from retriever.index.options import BuildOptions
from retriever.index.stores import list_stores
from retriever.store.embeddings import INDEXES_FILE, record_index
from tests.conftest import synthetic_docs, write_jsonl

CHUNK = 8
DOCS = 20  # three chunks of CHUNK: 8, 8 and 4 documents


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "corpus.jsonl", synthetic_docs(DOCS))


def _build(
    model: Path,
    corpus: Path,
    out: Path,
    store: Path,
    *,
    encoder_config: EncoderConfig | None = None,
    overwrite: bool = False,
) -> Path:
    spec = IndexSpec(
        model=ModelSpec(name=str(model), dtype="float32"),
        encoder=encoder_config or EncoderConfig(max_length=64),
    )
    return build_index(
        corpus,
        out,
        spec,
        BuildOptions(chunk_size=CHUNK, store=store, overwrite=overwrite),
    )


def _encode(model: Path, corpus: Path, store: Path, *extra: str) -> None:
    argv = ["encode", str(corpus), "--out", str(store), "--model", str(model)]
    argv += ["--dtype", "float32", "--max-length", "64", "--chunk-size", str(CHUNK), *extra]
    assert main(["-q", *argv]) == 0


def _listed(capsys: pytest.CaptureFixture, root: Path) -> dict[str, dict[str, Any]]:
    """`retriever stores --json` under ``root``, by folder name."""
    capsys.readouterr()
    assert main(["-q", "stores", "--root", str(root), "--json"]) == 0
    return {Path(row["folder"]).name: row for row in json.loads(capsys.readouterr().out)}


def _refusal(capsys: pytest.CaptureFixture, *argv: str) -> str:
    capsys.readouterr()
    assert main(["-q", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    return lines[0]


def test_list_shows_size_count_key_completeness_and_the_indexes(
    tiny_model: Path, corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = tmp_path / "stores"
    index = _build(tiny_model, corpus, tmp_path / "index", root / "s1")
    _encode(tiny_model, corpus, root / "s2", "--shard", "0/2")  # chunks 0 and 2 of 3

    listed = _listed(capsys, root)
    assert sorted(listed) == ["s1", "s2"]
    full, partial = listed["s1"], listed["s2"]
    assert full["folder"] == str((root / "s1").resolve())
    assert full["bytes"] == folder_bytes(root / "s1") > 0
    assert full["documents"] == partial["documents"] == DOCS
    assert full["complete"] and full["shards"] == {"written": 3, "expected": 3}
    assert not partial["complete"] and partial["shards"] == {"written": 2, "expected": 3}
    assert full["model"]["name"] == str(tiny_model)
    assert (full["kind"], full["dtype"], full["max_length"]) == ("documents", "float32", 64)
    assert full["prompt"] == partial["prompt"]
    assert full["indexes"] == [str(index)]
    assert partial["indexes"] == []

    assert main(["-q", "stores", "list", "--root", str(root)]) == 0
    text = capsys.readouterr().out
    assert f"{DOCS} documents  complete (3/3 shards)" in text
    assert f"{DOCS} documents  partial (2/3 shards)" in text
    assert "max length 64" in text and "float32" in text
    assert f"  index {index}" in text
    assert f"{full['bytes'] / 2**10:,.1f} KiB" in text  # a small store's size


def test_an_index_deleted_or_rebuilt_from_another_store_leaves_the_list(
    tiny_model: Path, corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = tmp_path / "stores"
    kept = _build(tiny_model, corpus, tmp_path / "kept", root / "s1")
    gone = _build(tiny_model, corpus, tmp_path / "gone", root / "s1")
    moved = _build(tiny_model, corpus, tmp_path / "moved", root / "s1")
    assert set(_listed(capsys, root)["s1"]["indexes"]) == {str(kept), str(gone), str(moved)}

    gone.unlink()  # the index path is a link to its current generation
    # The same path rebuilt from a store of another encoding no longer uses s1.
    _build(
        tiny_model,
        corpus,
        moved,
        root / "s2",
        encoder_config=EncoderConfig(max_length=32),
        overwrite=True,
    )
    listed = _listed(capsys, root)
    assert listed["s1"]["indexes"] == [str(kept)]
    assert listed["s2"]["indexes"] == [str(moved)]


def test_remove_deletes_the_store_and_names_the_indexes_that_keep_working(
    tiny_model: Path, corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = tmp_path / "stores"
    index = _build(tiny_model, corpus, tmp_path / "index", root / "first-store")
    shutil.copytree(root / "first-store", root / "second-store")

    capsys.readouterr()
    assert main(["-q", "stores", "--root", str(root), "remove", "fir"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith(f"removed {(root / 'first-store').resolve()}")
    assert str(index) in out and len(out.splitlines()) == 1
    assert not (root / "first-store").exists()
    assert sorted(_listed(capsys, root)) == ["second-store"]
    # The index never reads its store after the build.
    assert Searcher.load(index).search("bone disease", k=3)

    assert main(["-q", "stores", "remove", str(root / "second-store"), "--json"]) == 0
    removed = json.loads(capsys.readouterr().out)
    assert [row["folder"] for row in removed] == [str((root / "second-store").resolve())]
    assert list_stores(root) == []


def test_remove_deletes_only_what_the_store_wrote(
    tiny_model: Path, corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    store = tmp_path / "stores" / "mixed"
    _build(tiny_model, corpus, tmp_path / "index", store)
    (store / "notes.txt").write_text("the user's own")
    (store / "shards" / "plot.png").write_bytes(b"not a shard")
    capsys.readouterr()
    assert main(["stores", "remove", str(store)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"removed {store.resolve()}") and len(out.splitlines()) == 1
    assert out.rstrip().endswith("; kept 2 file(s) it did not write: notes.txt, shards/plot.png")
    assert sorted(str(p.relative_to(store)) for p in store.rglob("*")) == [
        "notes.txt",
        "shards",
        "shards/plot.png",
    ]
    assert list_stores(tmp_path / "stores") == []  # no store is left there


def test_remove_refuses_unknown_ambiguous_and_foreign_names_in_one_line(
    tiny_model: Path, corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = tmp_path / "stores"
    _encode(tiny_model, corpus, root / "alpha-1", "--shard", "0/3")
    shutil.copytree(root / "alpha-1", root / "alpha-2")
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "notes.txt").write_text("not a store")

    unknown = _refusal(capsys, "stores", "--root", str(root), "remove", "beta")
    assert "no embedding store named 'beta'" in unknown
    ambiguous = _refusal(capsys, "stores", "--root", str(root), "remove", "alpha")
    assert "names 2 stores" in ambiguous and "alpha-1, alpha-2" in ambiguous
    foreign = _refusal(capsys, "stores", "remove", str(plain))
    assert "is not an embedding store" in foreign
    # One bad name among good ones removes nothing.
    _refusal(capsys, "stores", "--root", str(root), "remove", "alpha-1", "beta")
    assert (root / "alpha-1").is_dir() and (root / "alpha-2").is_dir()
    assert (plain / "notes.txt").exists()


def test_the_manifest_records_the_store_size_at_build_time(
    tiny_model: Path, corpus: Path, tmp_path: Path
) -> None:
    store = tmp_path / "stores" / "s1"
    _encode(tiny_model, corpus, store)
    size = folder_bytes(store)
    index = build_index(None, tmp_path / "index", None, BuildOptions(from_store=store))
    manifest = json.loads((index / "manifest.json").read_text())
    assert manifest["store"]["bytes"] == size
    assert (store / INDEXES_FILE).exists()  # written after the manifest, not counted in it


def test_a_failure_to_note_the_index_does_not_fail_the_build(
    tiny_model: Path,
    corpus: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def refuse(folder: Path, index: Path) -> None:
        raise PermissionError(13, "Permission denied", str(folder / INDEXES_FILE))

    monkeypatch.setattr("retriever.index.build.record_index", refuse)
    index = _build(tiny_model, corpus, tmp_path / "index", tmp_path / "stores" / "s1")
    assert (index / "manifest.json").exists()
    assert "could not note the index" in caplog.text
    assert list_stores(tmp_path / "stores")[0].indexes == []


def test_concurrent_builds_each_keep_their_note(tmp_path: Path) -> None:
    indexes = [tmp_path / f"index-{i}" for i in range(8)]
    for index in indexes:  # notes of indexes that no longer exist are dropped
        index.mkdir()
    threads = [threading.Thread(target=record_index, args=(tmp_path, i)) for i in indexes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    noted = json.loads((tmp_path / INDEXES_FILE).read_text())["indexes"]
    assert sorted(noted) == sorted(map(str, indexes))
    indexes[0].rmdir()
    record_index(tmp_path, indexes[1])  # the next note drops the one that is gone
    assert json.loads((tmp_path / INDEXES_FILE).read_text())["indexes"] == sorted(
        map(str, indexes[1:])
    )


def test_stores_help_fits_the_terminal(
    capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    for argv in (["stores"], ["stores", "list"], ["stores", "remove"]):
        with pytest.raises(SystemExit) as exit_info:
            main([*argv, "--help"])
        assert exit_info.value.code == 0
        text = capsys.readouterr().out
        assert [line for line in text.splitlines() if len(line) > 100] == []
