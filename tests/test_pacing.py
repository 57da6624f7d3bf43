"""Long builds: shards sized by time, the ETA line, the disk check before encoding."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from retriever import EncoderConfig, RetrieverError, build_index
from retriever.cli import main
from retriever.core.spec import DenseSpec, IndexSpec, ModelSpec, SearchParams, SparseSpec
from retriever.data.datasets import scan_corpus
from retriever.encode.encoder import Encoder
from retriever.index.options import BuildOptions
from retriever.store.embeddings import EmbeddingStore
from retriever.store.encoding import encode_corpus
from retriever.store.pacing import CHUNK_BOUNDS, chunk_size_for, duration_text
from tests.conftest import synthetic_docs, write_jsonl

ROOT = Path(__file__).resolve().parents[1]


class FakeClock:
    """Seconds that move only when a batch is encoded, at a chosen rate."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def encoder(tiny_model: Path) -> Encoder:
    return Encoder.load(
        str(tiny_model), EncoderConfig(max_length=64), dtype="float32", batch_size=4
    )


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "corpus.jsonl", synthetic_docs(150))


def _at_rate(monkeypatch: pytest.MonkeyPatch, clock: FakeClock, rate: float) -> list[int]:
    """Make every encoded batch take ``rate`` documents per second of ``clock``; returns
    the sizes of the encode calls."""
    real = Encoder.encode_poolings
    calls: list[int] = []

    def timed(self, texts, poolings, *, on_batch=None, **kwargs):
        calls.append(len(texts))

        def batch_done(n: int) -> None:
            clock.now += n / rate
            if on_batch is not None:
                on_batch(n)

        return real(self, texts, poolings, on_batch=batch_done, **kwargs)

    monkeypatch.setattr(Encoder, "encode_poolings", timed)
    return calls


def test_chunk_size_is_two_minutes_of_encoding_within_bounds() -> None:
    assert chunk_size_for(1.69) == 200  # 202.8 documents, to two significant digits
    assert chunk_size_for(7.3) == 880
    assert chunk_size_for(0.01) == CHUNK_BOUNDS[0]
    assert chunk_size_for(5000.0) == CHUNK_BOUNDS[1]
    assert duration_text(3300) == "55 min 00 s" and duration_text(3930) == "1 h 05 min"


def test_a_new_store_sizes_its_chunks_from_the_measured_rate(
    encoder: Encoder,
    corpus: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    calls = _at_rate(monkeypatch, clock, rate=0.6)  # 0.6 docs/s x 120 s = 72 documents
    with caplog.at_level(logging.INFO, logger="retriever"):
        store = encode_corpus(encoder, scan_corpus(corpus), folder=tmp_path / "store", clock=clock)
    assert store.chunk_size == 72 and store.key["chunk_size"] == 72
    assert store.num_chunks == 3 and not store.missing_chunks()
    assert calls == [8, 72, 72, 6]  # a probe of two batches of 4, then the chunks
    eta = [r.message for r in caplog.records if "docs/s" in r.message]
    assert len(eta) == 1
    assert "encoding 150 documents at 0.6 docs/s: about 4 min 10 s" in eta[0]
    assert "in shards of 72" in eta[0] and "free" in eta[0] and "store" in eta[0]


def test_a_second_process_keeps_the_stores_chunk_size(
    encoder: Encoder,
    tiny_model: Path,
    corpus: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    clock = FakeClock()
    _at_rate(monkeypatch, clock, rate=0.6)
    folder = tmp_path / "store"
    encode_corpus(encoder, scan_corpus(corpus), folder=folder, slice_=(0, 2), clock=clock)
    # Another process, encoding the other slice at this machine's real (much higher)
    # rate, with no --chunk-size: it must write chunks of the store's size.
    argv = ["encode", str(corpus), "--out", str(folder), "--shard", "1/2"]
    argv += ["--model", str(tiny_model), "--dtype", "float32", "--max-length", "64"]
    done = subprocess.run(
        [sys.executable, "-m", "retriever.cli", "-q", *argv],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    store = EmbeddingStore.open(folder)
    assert store.chunk_size == 72 and not store.missing_chunks()
    assert [s.count for s in store.shards()] == [72, 72, 6]
    assert {s.record["slice"] for s in store.shards()} == {"0/2", "1/2"}
    # A different size asked for explicitly is refused, in one line.
    capsys.readouterr()
    code = main([*argv, "--chunk-size", "50"])
    err = capsys.readouterr().err
    assert code == 2 and "holds chunks of 72 documents, not the 50 of --chunk-size" in err
    assert len(err.strip().splitlines()) == 1


def test_a_disk_too_small_is_refused_before_encoding(
    encoder: Encoder,
    tiny_model: Path,
    corpus: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    calls = _at_rate(monkeypatch, FakeClock(), rate=10.0)
    monkeypatch.setattr("retriever.store.pacing.free_bytes", lambda folder: 50_000)
    with pytest.raises(RetrieverError, match=r"not enough disk: this build needs about .* free"):
        build_index(
            corpus,
            tmp_path / "index",
            IndexSpec(
                model=ModelSpec(name=str(tiny_model), dtype="float32"),
                encoder=EncoderConfig(max_length=64),
            ),
            BuildOptions(store=tmp_path / "store"),
        )
    assert calls == [] and not (tmp_path / "index").exists()
    assert not (tmp_path / "store" / "store.json").exists()
    argv = ["index", str(corpus), "--out", str(tmp_path / "cli"), "--model", str(tiny_model)]
    code = main([*argv, "--dtype", "float32", "--store", str(tmp_path / "store")])
    err = capsys.readouterr().err
    assert code == 2 and "store" in err and "index" in err and "48.8 KiB free" in err
    assert len(err.strip().splitlines()) == 1 and calls == []
    # With room for it the same build runs.
    monkeypatch.setattr("retriever.store.pacing.free_bytes", lambda folder: 10**12)
    assert main([*argv, "--dtype", "float32", "--store", str(tmp_path / "store")]) == 0


@pytest.mark.parametrize(
    "dense",
    [
        DenseSpec(),
        DenseSpec(index_type="HNSW16", storage="binary", search=SearchParams(rescore=4)),
        DenseSpec(
            index_type="IVF4",
            storage="int8",
            rescore_vectors="float32",
            search=SearchParams(rescore=2),
        ),
        None,
    ],
    ids=["flat", "hnsw-binary-rescore", "ivf-int8-float32-rescore", "no-dense"],
)
def test_the_disk_estimate_covers_every_file_the_index_writes(
    dense: DenseSpec | None, tiny_model: Path, tmp_path: Path
) -> None:
    """The check before encoding counts the filter, centre, rescore vectors, docstore,
    sparse, BM25 and manifest: the blocks the generation takes stay within it."""
    from retriever.index.build import estimated_index_bytes

    corpus = write_jsonl(tmp_path / "docs.jsonl", synthetic_docs(300))
    spec = IndexSpec(
        model=ModelSpec(name=str(tiny_model), dtype="float32"),
        encoder=EncoderConfig(max_length=64),
        dense=dense,
        sparse=SparseSpec(doc_tokens=40),
        bm25=True,
    )
    out = build_index(corpus, tmp_path / "idx", spec, BuildOptions(batch_size=32))
    encoder = Encoder.load(str(tiny_model), spec.encoder, dtype="float32")
    estimate = estimated_index_bytes(spec, encoder, scan_corpus(corpus))
    files = [path for path in out.resolve().rglob("*") if path.is_file()]
    written = sum(max(path.stat().st_blocks * 512, path.stat().st_size) for path in files)
    assert written <= estimate
