"""The frontier's approximate indexes at 10^5 and 10^6 vectors generated from real ones.

SciFact has 5,183 documents: too few for an approximate index to matter, and tiling copies
of them makes recall per vector meaningless (the copies of one document are ties). Here
each synthetic raw embedding is a real one plus Gaussian noise shaped by the real
embeddings' own covariance (a smoothed bootstrap). Every generated vector is distinct, the
set keeps the real vectors' anisotropy and their clusters, and the noise's scale is
calibrated so that a synthetic vector lies as close to its nearest real document as a real
document lies to its nearest other one (median cosine, in the filtered space). Its exact
neighbours are therefore as close as a real collection's, not near-duplicates, and recall
against exact search over the same vectors measures the index, not tie-breaking.

Each row is the dense backend a :class:`retriever.Searcher` opens (saved, then opened from
its folder, rescore vectors memory-mapped), searched with the real SciFact queries through
the same filter.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from retriever.core.spec import DenseSpec, SearchParams
from retriever.encode.embedfilter import EmbedFilter
from retriever.evaluation.bench.frontier import storage_setting
from retriever.evaluation.intervals import paired_ratio_interval
from retriever.evaluation.metrics import median_seconds, percentiles_ms, time_each
from retriever.parts.dense.backends import FaissBackend, backend_bytes, build_in_memory
from retriever.parts.dense.codes import rescore_bytes
from retriever.parts.dense.faiss_install import faiss

SPREADS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0)


def noise_basis(real: np.ndarray) -> np.ndarray:
    """``B`` with ``B B^T`` the covariance of ``real`` (rows): noise is ``z B^T``."""
    centred = np.asarray(real, dtype=np.float64) - real.mean(axis=0)
    eigenvalues, eigenvectors = np.linalg.eigh(centred.T @ centred / len(real))
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0, None))).astype(np.float32)


def synthetic_embeddings(
    real: np.ndarray, n: int, spread: float, *, seed: int, chunk: int = 100_000
) -> Iterator[np.ndarray]:
    """``n`` raw embeddings in chunks: random real rows plus ``spread`` x covariance-shaped
    Gaussian noise."""
    rng = np.random.default_rng(seed)
    basis = noise_basis(real)
    for lo in range(0, n, chunk):
        size = min(chunk, n - lo)
        parents = real[rng.integers(0, len(real), size)]
        noise = rng.standard_normal((size, basis.shape[1]), dtype=np.float32) @ basis.T
        yield (parents + spread * noise).astype(np.float32)


def nearest_similarity(vectors: np.ndarray, reference: np.ndarray) -> float:
    """Median over ``vectors`` of the cosine to the nearest ``reference`` row."""
    return float(np.median((vectors @ reference.T).max(axis=1)))


def calibrate_spread(real: np.ndarray, embed_filter: EmbedFilter, *, seed: int) -> dict[str, float]:
    """The spread whose synthetic vectors' nearest-real similarity is closest to real
    documents' nearest-other similarity (a sample of 2,000 of each)."""
    rng = np.random.default_rng(seed)
    sample = real[rng.choice(len(real), min(2000, len(real)), replace=False)]
    filtered = embed_filter.transform(real)
    # A sample row's nearest real row is itself: its second nearest is its neighbour.
    own = embed_filter.transform(sample) @ filtered.T
    target = float(np.median(np.sort(own, axis=1)[:, -2]))
    found = {}
    for spread in SPREADS:
        made = next(synthetic_embeddings(real, 2000, spread, seed=seed, chunk=2000))
        found[spread] = nearest_similarity(embed_filter.transform(made), filtered)
    best = min(found, key=lambda s: abs(found[s] - target))
    return {"spread": best, "target_similarity": target, "similarity": found[best]}


@dataclass(frozen=True)
class ScaleRow:
    """One index over one collection: its type, storage and search parameters."""

    index_type: str
    storage: str

    @property
    def rescore(self) -> bool:
        return self.storage.endswith("+rescore")


def open_like_a_searcher(
    vectors: np.ndarray, row: ScaleRow, folder: Path, rescore: int
) -> tuple[FaissBackend, float, dict[str, Any]]:
    """Build ``row``'s backend over ``vectors``, save it, and open it from ``folder`` as a
    searcher would; returns it, the build seconds and its saved description."""
    storage, bits = storage_setting(row.storage)
    spec = DenseSpec(
        index_type=row.index_type,
        storage=storage,
        bits=bits,
        search=SearchParams(rescore=rescore if row.rescore else None),
    )
    started = time.perf_counter()
    built = build_in_memory(spec, vectors, folder)
    built.index  # noqa: B018  (the builder finishes here: part of the build)
    seconds = time.perf_counter() - started
    description = built.save(folder)
    del built
    backend = FaissBackend.open(folder, description, vectors.shape[1], use_gpu=False)
    backend.set_search_params({"rescore": rescore if row.rescore else None})
    return backend, seconds, description


def measure_row(
    backend: FaissBackend | faiss.Index,
    queries: np.ndarray,
    exact: np.ndarray,
    *,
    k: int,
    latency_queries: int,
    warmup: int,
) -> dict[str, Any]:
    """Single-query latency, batched QPS and recall@k against exact search, of a backend
    or a bare FAISS index (both search as ``(scores, ids)``)."""
    single = percentiles_ms(
        time_each(
            [lambda q=q: backend.search(q[None], k) for q in queries[:latency_queries]], warmup
        )
    )
    (_, keys), seconds = median_seconds(lambda: backend.search(queries, k))
    found = [len(set(a) & set(e[:k])) / k for a, e in zip(keys, exact, strict=True)]
    # Exact search finds all k for every query: the ratio to it is the mean recall, and
    # its bootstrap interval says how much the query sample moves it.
    recall = paired_ratio_interval(found, np.ones(len(found)))
    return {
        "search_ms_p50": single["p50"],
        "search_ms_p95": single["p95"],
        "batch_qps": len(queries) / seconds,
        "recall_at_10_vs_exact": recall.ratio,
        "recall_at_10_low": recall.low,
        "recall_at_10_high": recall.high,
    }


def scale_rows(
    vectors: np.ndarray,
    queries: np.ndarray,
    exact: np.ndarray,
    row: ScaleRow,
    spans: list[dict[str, int]],
    *,
    rescores: Sequence[int] = (4,),
    k: int = 10,
    latency_queries: int = 100,
    warmup: int = 5,
) -> list[dict[str, Any]]:
    """One index built, opened as a searcher, and measured at each search setting of
    ``spans`` (a rescoring row at each of ``rescores`` too: the rescore depth is a search
    setting); RAM is the index file (what FAISS holds in memory), the rescore vectors are
    memory-mapped and counted apart."""
    if row.rescore:
        spans = [{**params, "rescore": depth} for params in spans for depth in rescores]
    with tempfile.TemporaryDirectory(prefix="frontier-scale-") as scratch:
        folder = Path(scratch)
        backend, build_seconds, description = open_like_a_searcher(
            vectors, row, folder, rescores[0]
        )
        mapped = rescore_bytes(folder)
        total = backend_bytes(folder, description) or 0
        rows = []
        for params in spans:
            backend.set_search_params(params)
            measured = measure_row(
                backend, queries, exact, k=k, latency_queries=latency_queries, warmup=warmup
            )
            rows.append(
                {
                    "index_type": row.index_type,
                    "storage": row.storage,
                    "params": params,
                    "build_seconds": build_seconds,
                    **measured,
                    "ram_bytes": total - mapped,
                    "mapped_bytes": mapped,
                    "bytes_per_vector": total / len(vectors),
                }
            )
        del backend
    return rows


def kth_neighbour_similarity(
    sample: np.ndarray, collection: np.ndarray, *, k: int = 10, inside: bool, block: int = 100
) -> dict[str, float]:
    """Quantiles (p10, p50, p90) over ``sample`` rows of the similarity of their ``k``-th
    nearest ``collection`` row; ``inside``: the sample rows are in the collection, and
    their own row does not count. How far apart a collection's neighbourhoods are: what
    decides whether an approximate index's recall is easy or hard there."""
    rank = k + 1 if inside else k
    kth = []
    for lo in range(0, len(sample), block):
        scores = sample[lo : lo + block] @ collection.T
        kth.append(np.partition(scores, -rank, axis=1)[:, -rank])
    values = np.concatenate(kth)
    return {f"p{q}": float(np.percentile(values, q)) for q in (10, 50, 90)}


def neighbourhoods(
    real: np.ndarray, synthetic: np.ndarray, queries: np.ndarray, *, seed: int, sample: int = 1000
) -> dict[str, dict[str, float]]:
    """The 10th-neighbour similarity of documents among their own collection and of the
    queries, real collection against synthetic (all filtered the same way)."""
    rng = np.random.default_rng(seed)
    own_real = real[rng.choice(len(real), min(sample, len(real)), replace=False)]
    own_synthetic = synthetic[
        rng.choice(len(synthetic), min(sample, len(synthetic)), replace=False)
    ]
    return {
        "documents_real": kth_neighbour_similarity(own_real, real, inside=True),
        "documents_synthetic": kth_neighbour_similarity(own_synthetic, synthetic, inside=True),
        "queries_real": kth_neighbour_similarity(queries, real, inside=False),
        "queries_synthetic": kth_neighbour_similarity(queries, synthetic, inside=False),
    }
