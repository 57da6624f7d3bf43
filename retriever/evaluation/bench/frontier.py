"""The compression frontier: filter x tau x storage x index, each a real index folder.

Every row is an index built by :func:`retriever.index.build.build_index` from the setting's
embedding store and searched through :class:`retriever.Searcher`, as a user would search
it. Each row reports nDCG@10, recall@10 against exact float32 search with the same filter,
the bytes per document the dense part keeps (codes, ids, binary centre, rescore vectors)
and those of them RAM holds (the rescore vectors are memory-mapped),
build seconds, single-query latency split into search and fetch (reading the hits'
documents) beside the query's encoding (measured once: the same LLM forward for every
row), and batched QPS. :func:`pareto_front` marks the rows no other row beats on both
nDCG@10 and bytes per document (all bytes, and RAM bytes).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from retriever.core.generations import generations_folder
from retriever.core.spec import DenseSpec, FilterSpec, SearchParams
from retriever.encode.embedfilter import EmbedFilter, UnembeddingSpectrum
from retriever.encode.encoder import Encoder
from retriever.evaluation.bench.rows import build_from_store
from retriever.evaluation.metrics import (
    PER_QUERY,
    EncodedQueries,
    median_seconds,
    per_query_metrics,
    percentiles_ms,
)
from retriever.parts.dense.backends import backend_bytes
from retriever.parts.dense.codes import rescore_bytes
from retriever.search.searcher import Searcher
from retriever.store.embeddings import EmbeddingStore

logger = logging.getLogger(__name__)

FILTERS = ("unfiltered", "embedfilter", "embedfilter-nomean")
RABITQ_ROWS = tuple(f"rabitq{b}{r}" for b in (1, 2, 4) for r in ("", "+rescore"))
STORAGE_ROWS = ("float32", "float16", "int8", "binary", "binary+rescore", "pq", *RABITQ_ROWS)
# Product quantization (FAISS "PQm", the index type's own codes): d/6 bytes per vector.
PQ_DIMS_PER_BYTE = 6


@dataclass(frozen=True)
class FrontierSettings:
    """The grid, and the fixed search settings of its approximate indexes (chosen before
    the run, never tuned on the queries it reports)."""

    filters: tuple[str, ...] = FILTERS
    taus: tuple[float, ...] = (1, 2, 4, 8, 16)
    storages: tuple[str, ...] = STORAGE_ROWS
    index_types: tuple[str, ...] = ("Flat", "HNSW32", "IVF64")
    # Binary rows of these index types are measured with each centre.
    centres: tuple[str, ...] = ("documents", "zero")
    centre_index_types: tuple[str, ...] = ("Flat",)
    rescores: tuple[int, ...] = (4, 16)
    ef_search: int = 64
    nprobe: int = 8
    k: int = 10
    latency_queries: int = 100
    warmup: int = 5


@dataclass
class FrontierInputs:
    """What every row of one run shares."""

    encoder: Encoder
    store: EmbeddingStore
    queries: EncodedQueries
    qrels: dict[str, dict[str, int]]
    folders: Path
    documents: np.ndarray = field(repr=False)  # raw pooled document embeddings
    doc_ids: list[str] = field(repr=False, default_factory=list)


@dataclass(frozen=True)
class Cell:
    """One row of the grid."""

    filter: str
    tau: float
    storage: str
    index_type: str
    centre: str = "documents"
    rescore: int | None = None

    @property
    def name(self) -> str:
        return (
            f"{self.filter}-tau{self.tau:g}-{self.storage}{self.rescore or ''}-{self.centre}-"
            f"{self.index_type}"
        )


def grid(settings: FrontierSettings) -> list[Cell]:
    """Every cell: the unfiltered vectors at tau 1 only, the paper's filter from tau 2 (at
    tau 1 it keeps every direction: the unfiltered row), the default at every tau."""
    cells = []
    for name in settings.filters:
        for tau in settings.taus:
            if (name == "unfiltered") != (tau == 1) and name != "embedfilter-nomean":
                continue
            for storage in settings.storages:
                for index_type in settings.index_types:
                    cells += _cells(name, tau, storage, index_type, settings)
    return cells


def _cells(
    name: str, tau: float, storage: str, index_type: str, settings: FrontierSettings
) -> list[Cell]:
    """A grid point's rows: one per binary centre and rescore M where those apply (PQ has
    no HNSW row: FAISS's HNSW over PQ codes is another structure)."""
    if storage == "pq" and index_type.startswith("HNSW"):
        return []
    centres = ("documents",)
    if storage.startswith("binary") and index_type in settings.centre_index_types:
        centres = settings.centres
    rescores = settings.rescores if storage.endswith("+rescore") else (None,)
    return [Cell(name, tau, storage, index_type, c, m) for c in centres for m in rescores]


def projection(spectrum: UnembeddingSpectrum, name: str, tau: float) -> EmbedFilter:
    spec = FilterSpec(tau=tau, remove_mean_direction=name == "embedfilter-nomean")
    return EmbedFilter.from_unembedding(spectrum, spec)


def exact_top(filtered_queries: np.ndarray, filtered_docs: np.ndarray, k: int) -> np.ndarray:
    """Each query's k best document rows by exact float32 inner product."""
    scores = filtered_queries @ filtered_docs.T
    top = np.argpartition(-scores, k, axis=1)[:, :k]
    return np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, 1), 1), 1)


def storage_setting(row_storage: str) -> tuple[str, int | None]:
    """A row's storage as the spec's ``storage`` and ``bits``: ``rabitq2+rescore`` is
    ``("rabitq", 2)``, ``binary+rescore`` is ``("binary", None)``."""
    name = row_storage.removesuffix("+rescore")
    if name.startswith("rabitq"):
        return "rabitq", int(name.removeprefix("rabitq"))
    return name, None


def pq_bytes(dim: int) -> int:
    """Sub-quantizers (bytes) of a PQ code: the largest divisor of ``dim`` at most d/6."""
    return max(m for m in range(1, max(1, dim // PQ_DIMS_PER_BYTE) + 1) if dim % m == 0)


def build_cell(cell: Cell, embed_filter: EmbedFilter, inputs: FrontierInputs, settings) -> Path:
    """The cell's index folder, built as ``retriever index --from STORE`` would."""
    folder = inputs.folders / cell.name
    (storage, bits), index_type = storage_setting(cell.storage), cell.index_type
    ann = {"HNSW": (None, settings.ef_search), "IVF": (settings.nprobe, None)}
    nprobe, ef_search = ann.get(cell.index_type.rstrip("0123456789"), (None, None))
    if storage == "pq":
        # "np": no polysemous training, which only reorders the codebook for Hamming
        # pre-filtering that ADC search never uses, at 15x the training time.
        codes = f"PQ{pq_bytes(embed_filter.dim)}np"
        storage, index_type = None, codes if index_type == "Flat" else f"{index_type},{codes}"
    dense = DenseSpec(
        index_type=index_type,
        storage=storage,
        bits=bits,
        binary_centre=cell.centre,
        search=SearchParams(nprobe, ef_search, cell.rescore),
    )
    build_from_store(folder, inputs.encoder, inputs.store, embed_filter, dense)
    return folder


def measure_cell(
    searcher: Searcher, exact: np.ndarray, inputs: FrontierInputs, settings: FrontierSettings
) -> dict[str, Any]:
    """One folder's row, every figure from searches through ``searcher``."""
    queries, k = inputs.queries, settings.k
    results, batch_seconds = median_seconds(
        lambda: searcher.rank(
            queries.texts, k, embeddings=queries.embeddings, query_ids=queries.ids
        )
    )
    search_ms, fetch_ms = _single_query_ms(searcher, inputs, settings)
    row_of = {doc_id: row for row, doc_id in enumerate(inputs.doc_ids)}
    overlaps = [
        len({row_of[d] for d in ranking.ids} & set(exact[i][:k].tolist())) / k
        for i, ranking in enumerate(results.rankings)
    ]
    manifest = searcher.manifest
    dense_bytes = backend_bytes(searcher.folder, manifest.backend) or 0
    mapped = rescore_bytes(searcher.folder)
    seconds = manifest.seconds
    per_query = per_query_metrics(inputs.qrels, results)
    ndcg = [per_query[q]["ndcg_at_10"] for q in inputs.qrels]
    return {
        "ndcg_at_10": float(np.mean(ndcg)),
        # In the order of the judged queries: what the ratios' intervals resample.
        PER_QUERY: ndcg,
        "recall_at_10_vs_exact": float(np.mean(overlaps)),
        "bytes_per_doc": dense_bytes / len(searcher),
        # What RAM holds: the rescore vectors are memory-mapped, paged in per candidate.
        "ram_bytes_per_doc": (dense_bytes - mapped) / len(searcher),
        "dense_bytes": dense_bytes,
        "build_seconds": sum(seconds.get(step, 0.0) for step in ("train", "filter", "index")),
        "encode_ms_p50": queries.latency_ms["p50"],
        "encode_ms_p95": queries.latency_ms["p95"],
        "search_ms_p50": search_ms["p50"],
        "search_ms_p95": search_ms["p95"],
        "fetch_ms_p50": fetch_ms["p50"],
        "fetch_ms_p95": fetch_ms["p95"],
        "batch_qps": len(queries.ids) / batch_seconds,
        "end_to_end_qps": len(queries.ids) / (batch_seconds + queries.batch_seconds),
    }


def _single_query_ms(
    searcher: Searcher, inputs: FrontierInputs, settings: FrontierSettings
) -> tuple[dict[str, float], dict[str, float]]:
    """Per query, after ``warmup`` untimed ones: the search (filter, index, rescore, ids)
    and the fetch (the k hits' documents from the docstore)."""
    queries = inputs.queries
    count = min(settings.latency_queries, len(queries.ids))
    search, fetch = [], []
    for position in list(range(settings.warmup)) + list(range(count)):
        raw = queries.embeddings[position : position + 1]
        started = time.perf_counter()
        ranking = searcher.rank([queries.texts[position]], settings.k, embeddings=raw).rankings[0]
        found = time.perf_counter()
        ranking.hits()
        done = time.perf_counter()
        search.append(found - started)
        fetch.append(done - found)
    return percentiles_ms(search[settings.warmup :]), percentiles_ms(fetch[settings.warmup :])


class MeasuredRows:
    """The rows measured so far, one JSON line each in ``path`` after a header naming what
    they were measured with, and a line per sitting.

    The whole grid is hundreds of index builds, hours on two cores: a run that stops keeps
    its rows, and a rerun whose header is the same (settings, machine, model, store)
    measures only the rest. A different header starts the file afresh.
    """

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        header = json.loads(json.dumps(header))  # as it reads back: tuples are lists
        self.path = path
        self.rows: dict[str, dict[str, Any]] = {}
        self.sittings = 1
        entries = _entries(path)
        if entries[:1] == [{"header": header}]:
            self.rows = {e["cell"]: e["row"] for e in entries if "cell" in e}
            self.sittings += sum("sitting" in e for e in entries)
            logger.info("resuming: %d rows already measured in %s", len(self.rows), path)
        else:
            entries = [{"header": header}]
        # Written afresh: a line torn by a killed run is not carried on.
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(entry) + "\n" for entry in entries))
        self._append({"sitting": datetime.now(timezone.utc).isoformat(timespec="seconds")})

    def add(self, name: str, row: dict[str, Any]) -> None:
        """Keep ``row``, measured under ``name`` (a cell's name)."""
        self.rows[name] = row
        self._append({"cell": name, "row": row})

    def _append(self, entry: dict[str, Any]) -> None:
        with self.path.open("a") as file:
            file.write(json.dumps(entry) + "\n")


def _entries(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of ``path`` up to the first that does not parse (a run killed while
    writing one leaves it torn)."""
    entries = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return entries


def frontier_rows(
    spectrum: UnembeddingSpectrum,
    inputs: FrontierInputs,
    settings: FrontierSettings,
    measured: MeasuredRows | None = None,
) -> list[dict[str, Any]]:
    """Every cell's row, in grid order, taken from ``measured`` where it holds one (and
    added to it otherwise); each folder is removed once measured."""
    filtered: dict[tuple[str, float], tuple[EmbedFilter, np.ndarray]] = {}
    cells = grid(settings)
    rows: list[dict[str, Any]] = []
    for number, cell in enumerate(cells, 1):
        if measured is not None and cell.name in measured.rows:
            rows.append(measured.rows[cell.name])
            continue
        key = (cell.filter, cell.tau)
        if key not in filtered:
            embed_filter = projection(spectrum, cell.filter, cell.tau)
            docs = embed_filter.transform(inputs.documents)
            exact = exact_top(embed_filter.transform(inputs.queries.embeddings), docs, settings.k)
            filtered[key] = (embed_filter, exact)
        row = {
            **_labels(cell, filtered[key][0]),
            **_measured_cell(cell, filtered[key], inputs, settings),
        }
        rows.append(row)
        if measured is not None:
            measured.add(cell.name, row)
        logger.info("row %d of %d: %s", number, len(cells), cell.name)
    mark_pareto(rows)
    return rows


def _measured_cell(
    cell: Cell,
    filtered: tuple[EmbedFilter, np.ndarray],
    inputs: FrontierInputs,
    settings: FrontierSettings,
) -> dict[str, Any]:
    embed_filter, exact = filtered
    folder = build_cell(cell, embed_filter, inputs, settings)
    searcher = Searcher.load(folder, encoder=inputs.encoder)
    try:
        return measure_cell(searcher, exact, inputs, settings)
    finally:
        searcher.close()
        shutil.rmtree(generations_folder(folder), ignore_errors=True)
        folder.unlink(missing_ok=True)


def _labels(cell: Cell, embed_filter: EmbedFilter) -> dict[str, Any]:
    return {
        "filter": cell.filter,
        "tau": cell.tau,
        "dim": embed_filter.dim,
        "storage": cell.storage,
        "binary_centre": cell.centre if cell.storage.startswith("binary") else None,
        "rescore": cell.rescore,
        "index_type": cell.index_type,
    }


def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
    """For each (bytes, quality) point: whether no other point has fewer or equal bytes and
    higher or equal quality, one of them strictly."""
    front = []
    for size, quality in points:
        beaten = any(s <= size and q >= quality and (s < size or q > quality) for s, q in points)
        front.append(not beaten)
    return front


def mark_pareto(rows: list[dict[str, Any]]) -> None:
    """``pareto``: on the front of nDCG@10 against all the bytes a row keeps;
    ``ram_pareto``: against the bytes it holds in RAM."""
    for mark, size in (("pareto", "bytes_per_doc"), ("ram_pareto", "ram_bytes_per_doc")):
        front = pareto_front([(r[size], r["ndcg_at_10"]) for r in rows])
        for row, on_front in zip(rows, front, strict=True):
            row[mark] = on_front
