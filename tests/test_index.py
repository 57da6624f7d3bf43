from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from retriever.errors import RetrieverError
from retriever.index import (
    build_faiss_index,
    load_faiss_index,
    save_faiss_index,
    search_faiss_index,
    set_search_parameters,
)


def _unit_vectors(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_flat_index_equals_brute_force_top_k(tmp_path: Path) -> None:
    docs, queries = _unit_vectors(2000, 48, 0), _unit_vectors(20, 48, 1)
    save_faiss_index(build_faiss_index(docs, "Flat"), tmp_path)
    scores, rows = search_faiss_index(load_faiss_index(tmp_path), queries, 10)
    exact = queries @ docs.T
    expected_rows = np.argsort(-exact, axis=1)[:, :10]
    np.testing.assert_array_equal(rows, expected_rows)
    np.testing.assert_allclose(scores, np.take_along_axis(exact, expected_rows, 1), rtol=1e-5)


@pytest.mark.parametrize("index_type", ["HNSW32", "IVF16,Flat"])
def test_approximate_types_train_and_mostly_agree_with_flat(index_type: str) -> None:
    docs, queries = _unit_vectors(3000, 32, 2), _unit_vectors(50, 32, 3)
    index = build_faiss_index(docs, index_type)
    assert index.is_trained and index.ntotal == 3000
    if index_type.startswith("IVF"):
        set_search_parameters(index, {"nprobe": 16})  # all lists: exact
    _, rows = search_faiss_index(index, queries, 10)
    exact = np.argsort(-(queries @ docs.T), axis=1)[:, :10]
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows, exact, strict=True)])
    assert recall > 0.9


def test_bad_factory_string_and_untrainable_index() -> None:
    docs = _unit_vectors(50, 16, 4)
    with pytest.raises(RetrieverError, match="invalid --index-type 'NoSuchIndex'"):
        build_faiss_index(docs, "NoSuchIndex")
    with pytest.raises(RetrieverError, match="cannot build a 'IVF4096,Flat' index of 50 vectors"):
        build_faiss_index(docs, "IVF4096,Flat")


def test_asking_for_a_gpu_without_one_is_an_error() -> None:
    from retriever.faiss_gpu import gpu_count

    if gpu_count():
        pytest.skip("a GPU is present")  # the refusal can only be seen without one
    with pytest.raises(RetrieverError, match="faiss sees no GPU"):
        build_faiss_index(_unit_vectors(10, 8, 5), "Flat", use_gpu=True)
