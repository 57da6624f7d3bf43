"""--runtime onnx: ONNX Runtime runs the transformer; everything around it stays the same."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from retriever import EncoderConfig, RetrieverError, Searcher, build_index
from retriever.cli import main
from retriever.data.datasets import scan_corpus
from retriever.encode.encoder import Encoder
from retriever.index.options import BuildOptions
from retriever.store.encoding import encode_corpus
from tests.conftest import TOY_DOCS, synthetic_docs, write_jsonl


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def encoders(tiny_model: Path, cache: Path) -> tuple[Encoder, Encoder]:
    with pytest.MonkeyPatch.context() as patched:
        patched.setenv("RETRIEVER_CACHE", str(cache))
        config = EncoderConfig(max_length=64)
        plain = Encoder.load(str(tiny_model), config, dtype="float32", batch_size=4)
        onnx = Encoder.load(str(tiny_model), config, batch_size=4, runtime="onnx")
    return plain, onnx


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_onnx_runtime_pools_the_same_vectors_as_torch(
    encoders: tuple[Encoder, Encoder], cache: Path
) -> None:
    plain, onnx = encoders
    assert (plain.runtime, onnx.runtime) == ("torch", "onnx")
    assert len(list((cache / "onnx").glob("*.onnx"))) == 1  # exported once, kept
    texts = [d["title"] + " " + d["text"] for d in synthetic_docs(11)]  # padded batches
    for pooling in ("mean", "last"):
        a = plain.encode_poolings(texts, (pooling,), show_progress=False)[pooling]
        b = onnx.encode_poolings(texts, (pooling,), show_progress=False)[pooling]
        assert _cosines(a, b).min() >= 0.9999
    queries = onnx.encode_queries(["bone disease"])
    assert queries.shape == (1, plain.hidden_size)


def test_an_onnx_store_is_its_own_encoding_and_builds_a_searchable_index(
    encoders: tuple[Encoder, Encoder], tmp_path: Path
) -> None:
    plain, onnx = encoders
    scan = scan_corpus(write_jsonl(tmp_path / "docs.jsonl", TOY_DOCS))
    store = encode_corpus(onnx, scan, folder=tmp_path / "store", chunk_size=8)
    assert store.key["runtime"] == "onnx"
    with pytest.raises(RetrieverError, match="runtime onnx there, torch here"):
        encode_corpus(plain, scan, folder=tmp_path / "store", chunk_size=8)
    out = build_index(
        None, tmp_path / "idx", None, BuildOptions(from_store=store.folder), encoder=plain
    )
    searcher = Searcher.load(out)
    try:
        assert searcher.search("The quick brown fox", k=1)[0].title == "Foxes"
    finally:
        searcher.close()


def test_onnx_refusals_are_one_line(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    corpus = write_jsonl(tmp_path / "docs.jsonl", TOY_DOCS)
    argv = ["encode", str(corpus), "--out", str(tmp_path / "s"), "--model", str(tiny_model)]
    code = main([*argv, "--runtime", "onnx", "--dtype", "bfloat16"])
    err = capsys.readouterr().err
    assert code == 2 and "--runtime onnx runs float32 on the CPU, not bfloat16" in err
    assert len(err.strip().splitlines()) == 1
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if it were not installed
    code = main([*argv, "--runtime", "onnx"])
    err = capsys.readouterr().err
    assert code == 2 and "pip install 'retriever[onnx]'" in err and "Traceback" not in err
