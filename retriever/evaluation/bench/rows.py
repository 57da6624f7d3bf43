"""The benchmark's rows: every variant built into a real index folder by the build
pipeline (:func:`retriever.index.build.build_index`, from the setting's embedding store) and
searched through :class:`retriever.Searcher` (:func:`retriever.evaluation.metrics.evaluate_index`),
so each row is what a user gets from the same index.

A variant's folder holds its dense index; the unfiltered, edge and nomean variants' folders
also hold their key-token index, and the hybrids' dense variant's folder (or, without one,
the unfiltered one) BM25 too, so the hybrids fuse parts of one index as ``Searcher`` does.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retriever.core.generations import generations_folder
from retriever.core.spec import DenseSpec, IndexSpec, SparseSpec
from retriever.encode.embedfilter import EmbedFilter
from retriever.encode.encoder import Encoder
from retriever.evaluation.bench.variants import BenchSettings, Variant, parse_index_type
from retriever.evaluation.metrics import EncodedQueries, Run, evaluate_index, evaluate_run
from retriever.evaluation.tuning import cross_validate_fusion
from retriever.index.build import BuildOptions, build_index
from retriever.index.manifest import Manifest
from retriever.parts.dense.gpu import GpuSetting
from retriever.search.searcher import FUSION_DEPTH, Searcher
from retriever.store.embeddings import EmbeddingStore

Scored = tuple[dict[str, Any], Run]

# The build steps (timed in the manifest) behind each retriever a search method reads.
_BUILD_STEPS = {"dense": ("train", "filter", "index"), "sparse": ("sparse",), "bm25": ("bm25",)}
# Build steps whose info lines would repeat for every one of a benchmark's folders.
_CHATTY = (
    "retriever.index.build",
    "retriever.index.assembly",
    "retriever.parts.docstore",
    "retriever.parts.bm25",
    "retriever.parts.sparse",
)


@dataclass
class SettingInputs:
    """What every folder of one (prompt, pooling) setting shares."""

    encoder: Encoder
    store: EmbeddingStore
    queries: EncodedQueries
    qrels: dict[str, dict[str, int]]
    # Where the folders are built; ``keep`` keeps them there after measuring.
    folders: Path
    keep: bool = False


@dataclass(frozen=True)
class FolderParts:
    """Which retrievers one variant's folder holds beside its dense index."""

    sparse: SparseSpec | None = None
    bm25: bool = False
    hybrid: bool = False


def parts_of(variant: Variant, bm25_variant: Variant, settings: BenchSettings) -> FolderParts:
    """The parts of ``variant``'s folder of the first index type (others: dense only)."""
    sparse = None
    if variant.has_key_tokens(settings):
        spec = settings.sparse_spec
        space = "raw" if variant.method == "unfiltered" else "filtered"
        sparse = SparseSpec(spec.doc_tokens, spec.query_tokens, space)
    return FolderParts(
        sparse=sparse,
        bm25=settings.bm25 and variant is bm25_variant,
        hybrid=variant.is_hybrid_part(settings),
    )


def variant_rows(
    variant: Variant, parts: FolderParts, inputs: SettingInputs, settings: BenchSettings
) -> tuple[list[Scored], list[Scored]]:
    """``(dense rows, other rows)`` of one variant: one folder per index type."""
    dense, others = [], []
    for position, index_type in enumerate(settings.index_types):
        held = parts if position == 0 else FolderParts()
        folder = inputs.folders / f"{variant.name}-{index_type}".replace(",", "_").replace(":", "-")
        _build(folder, variant, index_type, held, inputs, settings)
        searcher = Searcher.load(folder, encoder=inputs.encoder, use_gpu=settings.gpu)
        try:
            for row, run in _measure(searcher, held, inputs, settings):
                row.update(_labels(variant, row.pop("method"), index_type, settings))
                row["build_seconds"] = _build_seconds(searcher.manifest, row.pop("parts"))
                if inputs.keep:
                    row["index_folder"] = str(folder)
                (dense if row["family"] == "dense" else others).append((row, run))
        finally:
            searcher.close()
            if not inputs.keep:  # the path is a link to its generation: remove both
                shutil.rmtree(generations_folder(folder), ignore_errors=True)
                folder.unlink(missing_ok=True)
    return dense, others


def _build(
    folder: Path,
    variant: Variant,
    index_type: str,
    parts: FolderParts,
    inputs: SettingInputs,
    settings: BenchSettings,
) -> None:
    """Build ``folder`` from the setting's store, as ``retriever index --from`` would."""
    build_from_store(
        folder,
        inputs.encoder,
        inputs.store,
        variant.projection,
        parse_index_type(index_type),
        sparse=parts.sparse,
        bm25=parts.bm25,
        use_gpu=settings.gpu,
    )


def build_from_store(
    folder: Path,
    encoder: Encoder,
    store: EmbeddingStore,
    embed_filter: EmbedFilter,
    dense: DenseSpec | None,
    *,
    sparse: SparseSpec | None = None,
    bm25: bool = False,
    use_gpu: GpuSetting = None,
) -> None:
    """A benchmark's index folder, built from ``store`` with ``embed_filter`` as
    ``retriever index --from STORE`` would. A folder of an earlier run is replaced, and
    the build steps' info lines are silenced (a benchmark builds hundreds of folders)."""
    spec = IndexSpec(
        encoder=encoder.config, filter=embed_filter.spec, dense=dense, sparse=sparse, bm25=bm25
    )
    options = BuildOptions(from_store=store.folder, overwrite=True, use_gpu=use_gpu)
    with _quiet(*_CHATTY):
        build_index(None, folder, spec, options, encoder=encoder, embed_filter=embed_filter)


def _build_seconds(manifest: Manifest, parts: list[str]) -> float:
    """Seconds the build spent on the parts a search method reads (from the manifest)."""
    seconds = manifest.seconds
    return sum(seconds.get(step, 0.0) for part in parts for step in _BUILD_STEPS[part])


def _measure(
    searcher: Searcher, parts: FolderParts, inputs: SettingInputs, settings: BenchSettings
) -> Iterator[Scored]:
    """Every method the folder answers that the benchmark reports, then the
    cross-validated hybrids; each row names the parts whose build it counts."""
    methods = ["dense"]
    methods += ["sparse"] if parts.sparse else []
    methods += ["bm25"] if parts.bm25 else []
    if parts.hybrid:
        methods += [m for m in ("dense+sparse", "dense+bm25") if m in searcher.methods]
    rows, runs = evaluate_index(
        searcher,
        dict(zip(inputs.queries.ids, inputs.queries.texts, strict=True)),
        inputs.qrels,
        k=settings.k,
        methods=methods,
        fusions=settings.fusions,
        warmup=settings.warmup,
        encoded=inputs.queries,
        latency_queries=settings.latency_queries,
    )
    by_method: dict[str, list[Scored]] = {}
    for row, run in zip(rows, runs.values(), strict=True):
        row["parts"] = row["method"].split("+")
        # The benchmark's batch QPS has always been the search alone (its table compares
        # indexes); the end-to-end figure, with the batch's LLM forward, stands beside it.
        row["end_to_end_qps"] = row.pop("batch_qps")
        row["batch_qps"] = row.pop("search_qps")
        by_method.setdefault(row["method"], []).append((row, run))
    for method, scored in by_method.items():
        fixed = [(dict(row), run) for row, run in scored]  # as measured, before labelling
        yield from scored
        if "+" in method and settings.cv_folds:
            yield _cross_validated(searcher, method, fixed, inputs, settings)


def _cross_validated(
    searcher: Searcher,
    method: str,
    fixed: list[Scored],
    inputs: SettingInputs,
    settings: BenchSettings,
) -> Scored:
    """The hybrid fused with the setting k-fold cross-validation picks per fold (see
    retriever.evaluation.tuning), from the candidate lists ``searcher`` gives each part (as deep as
    its fixed-setting hybrids fuse). It costs one
    fusion per query like the fixed-setting rows, so it reports the weighted row's
    latency and bytes (the first fixed row's without one)."""
    queries = inputs.queries
    depth = max(settings.k, FUSION_DEPTH)  # as deep as Searcher's own hybrids fuse
    candidates = []
    for part in method.split("+"):
        embeddings = queries.embeddings if searcher.needs_encoder(part) else None
        found = searcher.rank(
            queries.texts, depth, method=part, embeddings=embeddings, query_ids=queries.ids
        )
        candidates.append([ranking.to_dict() for ranking in found.rankings])
    chosen = cross_validate_fusion(
        queries.ids,
        *candidates,
        inputs.qrels,
        folds=settings.cv_folds,
        k=settings.k,
        seed=settings.seed,
    )
    timed = next((row for row, _ in fixed if row["fusion"] == "weighted"), fixed[0][0])
    row = {
        **timed,
        **evaluate_run(inputs.qrels, chosen.run),
        "fusion": f"cv-{settings.cv_folds}fold",
        "cv_folds": [{**fold, "fold": n} for n, fold in enumerate(chosen.folds)],
    }
    return row, chosen.run


def _labels(
    variant: Variant, method: str, index_type: str, settings: BenchSettings
) -> dict[str, Any]:
    """A row's labels: which retriever, built from which variant, in which index."""
    if method == "dense":
        return {
            "family": "dense",
            "method": variant.method,
            "source": None,
            "band": variant.band,
            "tau": variant.tau,
            "dim": variant.projection.dim,
            "index_type": index_type,
        }
    if method == "bm25":
        empty = dict.fromkeys(("source", "band", "tau", "dim"))
        return {"family": "lexical", "method": "bm25", **empty, "index_type": "bm25s"}
    spec = settings.sparse_spec
    keytokens = f"keytokens K={spec.doc_tokens} M={spec.query_tokens}"
    from_variant = {
        "source": variant.method,
        "band": variant.band,
        "tau": variant.tau,
        "dim": variant.projection.dim,
    }
    if method == "sparse":
        return {"family": "sparse", "method": "keytokens", **from_variant, "index_type": keytokens}
    other = "keytokens" if method == "dense+sparse" else "bm25"
    return {
        "family": "hybrid",
        "method": f"dense+{other}",
        **from_variant,
        "index_type": f"{index_type} + {other}",
    }


@contextlib.contextmanager
def _quiet(*names: str) -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
