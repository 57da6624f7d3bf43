"""How search cost grows with the collection, for each filter dimension.

SciFact is too small for search latency to matter, so real (filtered) SciFact document
vectors are tiled to N vectors with small Gaussian noise and renormalised; the real
query vectors search them. For each N and dimension: single-query latency, batched QPS
and bytes for ``Flat`` and an IVF-PQ index, with the IVF-PQ recall@10 against Flat.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from retriever.core.sizes import folder_bytes
from retriever.core.spec import DenseSpec, FilterSpec
from retriever.encode.embedfilter import EmbedFilter, UnembeddingSpectrum
from retriever.evaluation.machine import machine_line
from retriever.evaluation.metrics import median_seconds, percentiles_ms, time_each
from retriever.parts.dense.backends import FaissBackend, build_in_memory
from retriever.parts.dense.gpu import GpuSetting

logger = logging.getLogger(__name__)


def tiled_vectors(base: np.ndarray, n: int, *, noise: float, seed: int) -> np.ndarray:
    """``n`` unit vectors: ``base`` rows repeated in order, plus N(0, noise^2/d) noise."""
    rng = np.random.default_rng(seed)
    dim = base.shape[1]
    out = np.empty((n, dim), dtype=np.float32)
    chunk = 100_000
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        rows = base[np.arange(lo, hi) % len(base)]
        block = rows + rng.standard_normal((hi - lo, dim), dtype=np.float32) * (
            noise / math.sqrt(dim)
        )
        out[lo:hi] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


# Code sizes (bytes) GPU IVF-PQ implements, and sub-vector widths it handles: a type the
# GPU cannot run would be timed on the CPU instead.
GPU_PQ_BYTES = (1, 2, 3, 4, 8, 12, 16, 20, 24, 28, 32, 40, 48, 56, 64, 96)
GPU_PQ_SUB_DIMS = (1, 2, 3, 4, 6, 8, 10, 12, 16, 20, 24, 28, 32)


def ivfpq_type(n: int, dim: int) -> str:
    """An IVF-PQ factory string sized for ``n`` vectors: ~4 sqrt(N) lists and the code
    size nearest dim/8 bytes (the smaller on a tie) that both CPU and GPU FAISS run.

    (Results published before this choice used dim/8 bytes: PQ72, 36, 18, 9.)"""
    nlist = int(min(1024, max(16, 4 * math.sqrt(n))))
    fits = [m for m in GPU_PQ_BYTES if dim % m == 0 and dim // m in GPU_PQ_SUB_DIMS]
    # No GPU size divides an odd dimension: keep dim/8, which the CPU runs (and the GPU
    # fallback says so).
    m = min(fits, key=lambda m: (abs(m - dim / 8), m)) if fits else max(1, dim // 8)
    return f"IVF{nlist},PQ{m}"


def _measure(
    backend: FaissBackend,
    queries: np.ndarray,
    k: int,
    latency_queries: int,
    warmup: int,
) -> tuple[dict[str, Any], np.ndarray]:
    """Times ``backend`` as a searcher does (it places its index on a GPU when asked to):
    the object timed is the object searched."""
    single = percentiles_ms(
        time_each(
            [lambda q=q: backend.search(q[None], k) for q in queries[:latency_queries]], warmup
        )
    )
    (_, rows), batch_seconds = median_seconds(lambda: backend.search(queries, k))
    with tempfile.TemporaryDirectory() as folder:
        backend.save(Path(folder))
        nbytes = folder_bytes(Path(folder))
    return {
        "search_ms_p50": single["p50"],
        "search_ms_p95": single["p95"],
        "batch_qps": len(queries) / batch_seconds,
        "index_bytes": nbytes,
        "ran_on": backend.placement.where,
    }, rows


def _timed_backend(
    vectors: np.ndarray, index_type: str, gpu: GpuSetting, params: dict[str, int | None]
) -> tuple[FaissBackend, float]:
    """The dense backend a searcher would open, built over ``vectors`` (keys 0..n-1)."""
    spec = DenseSpec(index_type=index_type)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        backend = build_in_memory(spec, vectors, Path(folder), use_gpu=gpu)
        # The builder finishes its index on first use: here, so that the build (and a GPU
        # build's copy back) is timed with it.
        backend.index  # noqa: B018
    seconds = time.perf_counter() - started
    backend.set_search_params(params)
    return backend, seconds


def _recalls(approx: np.ndarray, flat: np.ndarray, k: int, copies_of: int) -> tuple[float, float]:
    """Recall@k of ``approx`` against ``flat``, per vector and per source document: tiled
    copies of one document are near-identical, so which copy an index returns is noise."""
    per_vector = np.mean([len(set(a) & set(f)) / k for a, f in zip(approx, flat, strict=True)])
    per_document = np.mean(
        [
            len(set(a % copies_of) & set(f % copies_of)) / len(set(f % copies_of))
            for a, f in zip(approx, flat, strict=True)
        ]
    )
    return float(per_vector), float(per_document)


def _size_rows(
    base: np.ndarray,
    query_vectors: np.ndarray,
    n: int,
    tau: float,
    options: dict[str, Any],
) -> list[dict[str, Any]]:
    """Flat and IVF-PQ over ``base`` tiled to ``n`` vectors: one row each."""
    k, nprobe, gpu = options["k"], options["nprobe"], options["gpu"]
    timing = (options["latency_queries"], options["warmup"])
    vectors = tiled_vectors(base, n, noise=options["noise"], seed=options["seed"])
    flat, _ = _timed_backend(vectors, "Flat", gpu, {})
    flat_row, flat_hits = _measure(flat, query_vectors, k, *timing)
    flat.close()
    approx_type = ivfpq_type(n, base.shape[1])
    approx, build_seconds = _timed_backend(vectors, approx_type, gpu, {"nprobe": nprobe})
    del vectors
    approx_row, approx_hits = _measure(approx, query_vectors, k, *timing)
    approx.close()
    recall, doc_recall = _recalls(approx_hits, flat_hits, k, len(base))
    common = {"n": n, "tau": tau, "dim": base.shape[1]}
    logger.info(
        "N %-8d dim %-4d Flat %.3f ms, %s %.3f ms (recall@10 %.3f, documents %.3f)",
        n,
        base.shape[1],
        flat_row["search_ms_p50"],
        approx_type,
        approx_row["search_ms_p50"],
        recall,
        doc_recall,
    )
    return [
        {
            **common,
            "index_type": "Flat",
            **flat_row,
            "recall_at_10_vs_flat": 1.0,
            "doc_recall_at_10_vs_flat": 1.0,
        },
        {
            **common,
            "index_type": f"{approx_type} nprobe={nprobe}",
            **approx_row,
            "recall_at_10_vs_flat": recall,
            "doc_recall_at_10_vs_flat": doc_recall,
            "build_seconds": build_seconds,
        },
    ]


def run_scaling(
    documents: np.ndarray,
    queries: np.ndarray,
    unembedding: np.ndarray,
    *,
    sizes: tuple[int, ...] = (10_000, 100_000, 1_000_000),
    taus: tuple[float, ...] = (1, 2, 4, 8),
    k: int = 10,
    noise: float = 0.1,
    nprobe: int = 16,
    latency_queries: int = 50,
    warmup: int = 5,
    seed: int = 0,
    gpu: GpuSetting = None,
) -> list[dict[str, Any]]:
    """Rows of ``{n, tau, dim, index_type, search_ms_p50, ..., recall_at_10_vs_flat}``,
    each index searched through the dense backend a :class:`~retriever.Searcher` uses."""
    spectrum = UnembeddingSpectrum(unembedding)
    options = {
        "k": k,
        "noise": noise,
        "nprobe": nprobe,
        "latency_queries": latency_queries,
        "warmup": warmup,
        "seed": seed,
        "gpu": gpu,
    }
    rows = []
    for tau in taus:
        # The paper's filter, as in the published scaling rows (only the dimension matters).
        spec = FilterSpec(tau=tau, remove_mean_direction=False)
        embed_filter = EmbedFilter.from_unembedding(spectrum, spec)
        base = embed_filter.transform(documents)
        query_vectors = embed_filter.transform(queries)
        for n in sizes:
            rows += _size_rows(base, query_vectors, n, tau, options)
    return rows


def write_scaling_report(rows: list[dict[str, Any]], out: Path, meta: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "scaling.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [
        "# Search cost against collection size",
        "",
        machine_line(meta["machine"]),
        "",
        "Produced by:",
        "",
        "```",
        meta.get("command") or "(called from Python)",
        "```",
        "",
        f"{meta['description']} Latency: one query at a time (median and p95 of "
        f"{meta['latency_queries']} queries after warm-up); QPS: all {meta['queries']} "
        "queries in one batched call (median of 3 after a warm-up); bytes: the serialised "
        "FAISS index. Recall@10 of the "
        "approximate index against Flat on the same vectors, per vector and per document "
        "(hits collapsed to the SciFact document they are a noisy copy of: copies of one "
        "document are near-identical, so which copy comes back is noise).",
        "",
        "| N | tau | dim | index | searched on | search p50 ms | p95 ms | batch QPS | "
        "index bytes | recall@10 vs Flat | document recall@10 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['n']:,} | {r['tau']:g} | {r['dim']} | {r['index_type']} | "
            f"{r.get('ran_on', 'CPU')} | {r['search_ms_p50']:.3f} | {r['search_ms_p95']:.3f} | "
            f"{r['batch_qps']:,.0f} | "
            f"{r['index_bytes']:,} | {r['recall_at_10_vs_flat']:.3f} | "
            f"{r['doc_recall_at_10_vs_flat']:.3f} |"
        )
    (out / "scaling.md").write_text("\n".join(lines) + "\n")
    _plot(rows, out / "scaling.png")


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = ["Flat", "IVF"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), squeeze=False)
    for kind, ax in zip(kinds, axes[0], strict=True):
        for dim in sorted({r["dim"] for r in rows}, reverse=True):
            series = sorted(
                (r for r in rows if r["dim"] == dim and r["index_type"].startswith(kind)),
                key=lambda r: r["n"],
            )
            ax.plot(
                [r["n"] for r in series],
                [r["search_ms_p50"] for r in series],
                marker="o",
                label=f"dim {dim}",
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("vectors N")
        ax.set_ylabel("single-query search ms (p50)")
        ax.set_title(f"{'Flat (exact)' if kind == 'Flat' else 'IVF-PQ, nprobe 16'}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
