from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from retriever.core.errors import RetrieverError
from retriever.parts.dense.faiss_index import (
    build_faiss_index,
    load_faiss_index,
    save_faiss_index,
    search_faiss_index,
    set_search_parameters,
)
from retriever.parts.dense.faiss_install import (
    FAISS_DIMENSION_AWARE_DEFAULT,
    blas_threshold,
    faiss,
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
    from retriever.parts.dense.gpu import gpu_count

    if gpu_count():
        pytest.skip("a GPU is present")  # the refusal can only be seen without one
    with pytest.raises(RetrieverError, match="faiss sees no GPU"):
        build_faiss_index(_unit_vectors(10, 8, 5), "Flat", use_gpu=True)


def test_batched_exhaustive_search_switches_to_blas_after_a_few_queries() -> None:
    assert blas_threshold(FAISS_DIMENSION_AWARE_DEFAULT, 2) == 1_600
    assert blas_threshold(FAISS_DIMENSION_AWARE_DEFAULT, 0) == 800
    assert blas_threshold(20, 2) == 20  # FAISS before 1.15 counts queries, not work
    assert blas_threshold(5_000, 8) == 5_000  # a value someone chose is theirs
    assert faiss.cvar.distance_compute_blas_threshold != FAISS_DIMENSION_AWARE_DEFAULT


def test_blas_and_the_simd_scan_return_the_same_hits() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((3000, 72), dtype=np.float32)
    queries = rng.standard_normal((300, 72), dtype=np.float32)
    index = faiss.IndexFlatIP(72)
    index.add(vectors)
    chosen = faiss.cvar.distance_compute_blas_threshold
    try:
        runs = []
        for threshold in (0, 2**31 - 1):  # always BLAS, never BLAS
            faiss.cvar.distance_compute_blas_threshold = threshold
            runs.append(index.search(queries, 10))
    finally:
        faiss.cvar.distance_compute_blas_threshold = chosen
    (blas_scores, blas_ids), (scan_scores, scan_ids) = runs
    assert np.array_equal(blas_ids, scan_ids)
    assert np.allclose(blas_scores, scan_scores, atol=1e-5)


def test_search_parameters_reach_an_index_still_being_built(tmp_path) -> None:
    import numpy as np

    from retriever.core.spec import DenseSpec
    from retriever.parts.dense.backends import build_in_memory

    vectors = np.random.default_rng(0).standard_normal((500, 8)).astype(np.float32)
    backend = build_in_memory(DenseSpec(index_type="IVF16,Flat"), vectors, tmp_path)
    backend.set_search_params({"nprobe": 8})
    assert backend.placement.index.nprobe == 8
