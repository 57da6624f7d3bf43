"""The embedding store: streamed encoding into shards, resume, slices, assembly."""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pytest

from retriever import EncoderConfig, FilterSpec, RetrieverError, Searcher, build_index
from retriever.cli import main
from retriever.core.spec import DenseSpec, IndexSpec, ModelSpec
from retriever.data.datasets import scan_corpus
from retriever.encode.encoder import Encoder
from retriever.index.options import BuildOptions
from retriever.store.embeddings import EmbeddingStore
from retriever.store.encoding import encode_corpus
from tests.conftest import synthetic_docs, write_jsonl

CHUNK = 8


@pytest.fixture(scope="module")
def encoder(tiny_model: Path) -> Encoder:
    return Encoder.load(str(tiny_model), EncoderConfig(max_length=64), dtype="float32")


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    docs = synthetic_docs(45)
    docs[10] = {"_id": "empty", "title": "", "text": " "}  # skipped: chunks hold kept documents
    return write_jsonl(tmp_path / "corpus.jsonl", docs)


def _index_contents(path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(keys, vectors, document ids in key order) of an index."""
    searcher = Searcher.load(path)
    mapped = faiss.downcast_index(searcher.index.index)
    keys = faiss.vector_to_array(mapped.id_map)
    vectors = mapped.index.reconstruct_n(0, mapped.ntotal)
    ids = [document.id for _, document in searcher.docstore.items()]
    searcher.close()
    return keys, vectors, ids


def test_shards_hold_every_document_once_in_corpus_order(
    encoder: Encoder, corpus: Path, tmp_path: Path
) -> None:
    scan = scan_corpus(corpus)
    store = encode_corpus(
        encoder,
        scan,
        folder=tmp_path / "store",
        chunk_size=CHUNK,
        poolings=("mean", "last"),
        precision="float32",
    )
    assert scan.count == 44 and store.num_chunks == 6 and not store.missing_chunks()
    shards = store.shards()
    assert [s.count for s in shards] == [8, 8, 8, 8, 8, 4]
    ids = [d.id for s in shards for d in s.documents()]
    assert ids == [d["_id"] for d in synthetic_docs(45) if d["_id"] != "s10"]
    # The stored vectors are the encoder's, for every pooling asked, memory-mapped.
    texts = [d.embedding_text for d in shards[1].documents()]
    expected = encoder.encode_poolings(texts, ("mean", "last"), show_progress=False)
    for pooling in ("mean", "last"):
        stored = shards[1].embeddings(pooling)
        assert isinstance(stored, np.memmap)
        np.testing.assert_allclose(stored, expected[pooling], rtol=1e-5, atol=1e-6)


def test_a_crashed_encoding_resumes_from_the_last_complete_shard(
    encoder: Encoder, corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = build_index(
        corpus,
        tmp_path / "reference",
        IndexSpec(
            model=ModelSpec(name=encoder.resolved.name, dtype="float32"),
            encoder=EncoderConfig(max_length=64),
        ),
        BuildOptions(chunk_size=CHUNK, store=tmp_path / "reference-store"),
    )
    written = []
    original = EmbeddingStore.write_shard

    def crash_after_three(self, chunk, *args, **kwargs):
        if len(written) == 3:
            raise KeyboardInterrupt  # as a kill would, mid-way through chunk 3
        written.append(chunk)
        return original(self, chunk, *args, **kwargs)

    monkeypatch.setattr(EmbeddingStore, "write_shard", crash_after_three)
    spec = IndexSpec(
        model=ModelSpec(name=encoder.resolved.name, dtype="float32"),
        encoder=EncoderConfig(max_length=64),
    )
    options = BuildOptions(chunk_size=CHUNK, store=tmp_path / "store")
    with pytest.raises(KeyboardInterrupt):
        build_index(corpus, tmp_path / "index", spec, options)
    assert not (tmp_path / "index").exists()
    assert EmbeddingStore.open(tmp_path / "store").missing_chunks() == [3, 4, 5]

    encoded: list[int] = []
    monkeypatch.setattr(EmbeddingStore, "write_shard", original)
    real_encode = Encoder.encode_poolings

    def counting(self, texts, *args, **kwargs):
        encoded.append(len(texts))
        return real_encode(self, texts, *args, **kwargs)

    monkeypatch.setattr(Encoder, "encode_poolings", counting)
    build_index(corpus, tmp_path / "index", spec, options)
    assert sum(encoded) == 8 + 8 + 4  # only chunks 3, 4 and 5 were encoded again
    keys, vectors, ids = _index_contents(tmp_path / "index")
    ref_keys, ref_vectors, ref_ids = _index_contents(reference)
    np.testing.assert_array_equal(keys, ref_keys)
    np.testing.assert_array_equal(vectors, ref_vectors)
    assert ids == ref_ids


def test_a_store_of_another_encoding_is_refused_or_restarted(
    encoder: Encoder, tiny_model: Path, corpus: Path, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    encode_corpus(encoder, scan_corpus(corpus), folder=store, chunk_size=CHUNK)
    other = Encoder.load(
        str(tiny_model), EncoderConfig(prompt="echo", max_length=64), dtype="float32"
    )
    with pytest.raises(
        RetrieverError,
        match="holds another encoding .*prompt prompteol there, echo here.*--restart",
    ):
        encode_corpus(other, scan_corpus(corpus), folder=store, chunk_size=CHUNK)
    with pytest.raises(RetrieverError, match="corpus 44 documents.* there, 19 documents"):
        encode_corpus(encoder, scan_corpus(corpus, limit=20), folder=store, chunk_size=CHUNK)
    restarted = encode_corpus(
        other, scan_corpus(corpus), folder=store, chunk_size=CHUNK, restart=True
    )
    assert restarted.key["prompt"] == "echo" and not restarted.missing_chunks()


def test_slices_from_three_processes_assemble_into_the_same_index(
    tiny_model: Path, corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    common = [
        "--model",
        str(tiny_model),
        "--dtype",
        "float32",
        "--max-length",
        "64",
        "--chunk-size",
        str(CHUNK),
    ]
    store = tmp_path / "store"
    assert main(["encode", str(corpus), "--out", str(store), "--shard", "0/3", *common]) == 0
    assert main(["encode", str(corpus), "--out", str(store), "--shard", "2/3", *common]) == 0
    capsys.readouterr()
    code = main(["index", "--from", str(store), "--out", str(tmp_path / "early")])
    err = capsys.readouterr().err
    assert code == 2 and "2 of 6 chunks are missing (1, 4)" in err and "--shard 1/3" in err
    assert not (tmp_path / "early").exists()

    assert main(["encode", str(corpus), "--out", str(store), "--shard", "1/3", *common]) == 0
    assert main(["index", "--from", str(store), "--out", str(tmp_path / "sliced")]) == 0
    single = build_index(
        corpus,
        tmp_path / "single",
        IndexSpec(
            model=ModelSpec(name=str(tiny_model), dtype="float32"),
            encoder=EncoderConfig(max_length=64),
        ),
        BuildOptions(chunk_size=CHUNK, store=tmp_path / "single-store"),
    )
    sliced, whole = _index_contents(tmp_path / "sliced"), _index_contents(single)
    np.testing.assert_array_equal(sliced[0], whole[0])
    np.testing.assert_array_equal(sliced[1], whole[1])
    assert sliced[2] == whole[2]
    manifest = json.loads((tmp_path / "sliced" / "manifest.json").read_text())
    assert manifest["documents"]["history"][0]["source"] == str(corpus.resolve())


def test_a_slice_encoded_differently_is_refused(
    tiny_model: Path, corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    store = tmp_path / "store"
    base = ["--model", str(tiny_model), "--dtype", "float32", "--chunk-size", str(CHUNK)]
    assert main(["encode", str(corpus), "--out", str(store), "--shard", "0/2", *base]) == 0
    capsys.readouterr()
    code = main(
        ["encode", str(corpus), "--out", str(store), "--shard", "1/2", *base, "--max-length", "32"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "max length 256 there, 32 here" in err and "Traceback" not in err
    # A shard copied in from a store of other settings is caught at assembly.
    other = tmp_path / "other"
    assert (
        main(
            [
                "encode",
                str(corpus),
                "--out",
                str(other),
                "--shard",
                "1/2",
                *base,
                "--max-length",
                "32",
            ]
        )
        == 0
    )
    for path in (other / "shards").glob("000001.*"):
        (store / "shards" / path.name).write_bytes(path.read_bytes())
    capsys.readouterr()
    code = main(["index", "--from", str(store), "--out", str(tmp_path / "mixed")])
    err = capsys.readouterr().err
    assert code == 2 and "was encoded with other settings" in err


def test_one_store_serves_many_indexes_without_encoding_again(
    encoder: Encoder, corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = encode_corpus(
        encoder,
        scan_corpus(corpus),
        folder=tmp_path / "store",
        chunk_size=CHUNK,
        poolings=("mean", "last"),
    )

    def no_encoding(*args, **kwargs):
        raise AssertionError("the LLM ran again")

    monkeypatch.setattr(Encoder, "encode_poolings", no_encoding)
    for name, spec, pooling in (
        ("tau4", FilterSpec(tau=4), "mean"),
        ("last", FilterSpec(tau=2), "last"),
    ):
        build_index(
            None,
            tmp_path / name,
            IndexSpec(
                encoder=EncoderConfig(pooling=pooling),
                filter=spec,
                dense=DenseSpec(index_type="HNSW16"),
            ),
            BuildOptions(from_store=store.folder),
        )
        manifest = json.loads((tmp_path / name / "manifest.json").read_text())
        assert manifest["spec"]["encoder"]["pooling"] == pooling
        assert manifest["spec"]["encoder"]["max_length"] == 64  # the store's, not the default
        assert manifest["store"]["key_sha256"] == store.digest


def test_ray_flags_say_how_to_install_ray_when_it_is_missing(
    corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    code = main(["encode", str(corpus), "--out", str(tmp_path / "store"), "--ray"])
    err = capsys.readouterr().err
    assert code == 2 and "pip install 'retriever[ray]'" in err and "Traceback" not in err
    assert not (tmp_path / "store").exists()


def test_a_store_tolerates_another_slice_creating_it(
    encoder: Encoder, corpus: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "store"
    folder.mkdir()
    (folder / ".source.json.4242.partial").write_text("{}")  # a slice mid-way through
    store = encode_corpus(encoder, scan_corpus(corpus), folder=folder, chunk_size=CHUNK)
    assert not store.missing_chunks()


def test_chunk_starts_skip_lines_that_are_only_unicode_whitespace(tmp_path: Path) -> None:
    from retriever.data.datasets import chunk_starts, read_chunk

    path = tmp_path / "docs.jsonl"
    path.write_bytes(
        b'{"_id": "a", "text": "one"}\n\xc2\xa0\n{"_id": "b", "text": "two"}\n'
        b'{"_id": "c", "text": "three"}\n'
    )
    scan = scan_corpus(path)
    starts = chunk_starts(scan, 2)
    assert [d.id for d in read_chunk(scan, starts[1], 1)] == ["c"]


def test_a_float16_store_round_trips_the_encoders_vectors(
    encoder: Encoder, corpus: Path, tmp_path: Path
) -> None:
    store = encode_corpus(encoder, scan_corpus(corpus), folder=tmp_path / "store", chunk_size=CHUNK)
    assert store.precision == "float16" and store.poolings == ("mean",)  # the defaults
    files = sorted(p.name for p in store.shards_folder.glob("000001.*"))
    assert files == ["000001.docs.jsonl", "000001.json", "000001.mean.npy"]
    shard = store.shards()[1]
    assert shard.embeddings("mean").dtype == np.float16
    texts = [d.embedding_text for d in shard.documents()]
    exact = encoder.encode_poolings(texts, ("mean",), show_progress=False)["mean"]
    np.testing.assert_array_equal(shard.embeddings("mean"), exact.astype(np.float16))
    read = store.read("mean")[CHUNK : 2 * CHUNK]
    assert read.dtype == np.float32
    cosine = np.sum(read * exact, 1) / np.linalg.norm(read, axis=1) / np.linalg.norm(exact, axis=1)
    assert cosine.min() >= 0.9999
    # Reopened by another reader, it checks the float16 files.
    assert EmbeddingStore.open(store.folder).shards()[1].embeddings("mean").shape == exact.shape
    with pytest.raises(RetrieverError, match="keeps mean pooling only, not last"):
        shard.embeddings("last")
    huge = {"mean": np.full((CHUNK, exact.shape[1]), 1e6, dtype=np.float32)}
    with pytest.raises(RetrieverError, match="beyond float16's range.*--store-precision float32"):
        store.write_shard(1, list(shard.documents()), huge, slice_label="0/1")


def test_an_index_of_a_pooling_its_store_lacks_is_one_line_before_the_model_loads(
    encoder: Encoder,
    corpus: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = encode_corpus(encoder, scan_corpus(corpus), folder=tmp_path / "store", chunk_size=CHUNK)

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(Encoder, "load", never)
    argv = ["index", "--from", str(store.folder), "--out", str(tmp_path / "idx")]
    capsys.readouterr()
    code = main([*argv, "--pooling", "last"])
    err = capsys.readouterr().err
    assert code == 2 and "keeps mean pooling only, not last" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "idx").exists()


def test_a_store_of_both_poolings_or_of_version_1_serves_a_request_for_one(
    encoder: Encoder, corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RETRIEVER_CACHE", str(tmp_path / "cache"))
    scan = scan_corpus(corpus)
    both = encode_corpus(encoder, scan, chunk_size=CHUNK, poolings=("mean", "last"))
    assert both.folder.parent == tmp_path / "cache" / "embeddings"

    def never(*args, **kwargs):
        raise AssertionError("the LLM ran again")

    with monkeypatch.context() as patched:
        patched.setattr(Encoder, "encode_poolings", never)
        assert encode_corpus(encoder, scan).folder == both.folder  # mean only: served
    # A version 1 store (float32, every pooling, named by its whole key) is found too.
    legacy = encode_corpus(
        encoder, scan, chunk_size=4096, poolings=("mean", "last"), precision="float32"
    )
    key = {k: v for k, v in legacy.key.items() if k != "precision"}
    key.update(version=1, chunk_size=4096)
    from retriever.store.embeddings import key_digest

    old = legacy.folder.parent / key_digest(key)[:24]
    legacy.folder.rename(old)
    (old / "store.json").write_text(json.dumps(key))
    for record in (old / "shards").glob("*.json"):
        data = json.loads(record.read_text())
        record.write_text(json.dumps({**data, "key_sha256": key_digest(key)}))
    with monkeypatch.context() as patched:
        patched.setattr(Encoder, "encode_poolings", never)
        found = encode_corpus(encoder, scan, precision="float32")
    assert found.folder == old and found.precision == "float32"
    assert found.read("mean").shape == (44, encoder.hidden_size)
