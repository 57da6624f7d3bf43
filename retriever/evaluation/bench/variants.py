"""What the benchmark measures: its settings, and the projections (variants) it compares.

Every variant is an :class:`~retriever.encode.embedfilter.EmbedFilter`: the unfiltered identity,
EmbedFilter for each band and tau, the mean-direction refinement, and the baselines fitted
on a sample of the corpus (:mod:`retriever.encode.baselines`); the build pipeline stores each in
its own index folder exactly as ``retriever index`` would.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from retriever.core.config import BANDS, FUSIONS
from retriever.core.errors import RetrieverError
from retriever.core.spec import DEFAULT_MODEL, DenseSpec, EncoderConfig, FilterSpec, SparseSpec
from retriever.encode.baselines import BASELINES, fit_baseline
from retriever.encode.embedfilter import EmbedFilter, UnembeddingSpectrum
from retriever.encode.encoder import Encoder
from retriever.parts.dense.backends import check_dense_spec
from retriever.parts.dense.gpu import GpuOptions


@dataclass(frozen=True)
class BenchModel:
    """The model a benchmark encodes with, the encodings it compares (every prompt with
    every pooling), and how it runs them."""

    name: str = DEFAULT_MODEL
    prompts: tuple[str, ...] = ("prompteol",)
    poolings: tuple[str, ...] = ("mean",)
    max_length: int = 256
    dtype: str = "auto"
    device: str | None = None
    batch_size: int = 16

    def __post_init__(self) -> None:
        if not self.prompts or not self.poolings:
            raise RetrieverError("--prompt and --pooling each need at least one value")
        for prompt in self.prompts:
            for pooling in self.poolings:
                self.config(prompt, pooling)  # checks each setting

    def config(self, prompt: str, pooling: str) -> EncoderConfig:
        return EncoderConfig(prompt=prompt, pooling=pooling, max_length=self.max_length)

    def load(self, prompt: str, pooling: str) -> Encoder:
        return Encoder.load(
            self.name,
            self.config(prompt, pooling),
            dtype=self.dtype,
            device=self.device,
            batch_size=self.batch_size,
        )


@dataclass(frozen=True)
class ScalingSettings:
    """The collection sizes and dimensions (``taus``) a scaling run measures."""

    sizes: tuple[int, ...] = (10_000, 100_000, 1_000_000)
    taus: tuple[float, ...] = (1, 2, 4, 8)
    gpu: GpuOptions | None = None


@dataclass(frozen=True)
class BenchSettings:
    taus: tuple[float, ...] = (1, 2, 4, 8)
    bands: tuple[str, ...] = ("edge", "head", "tail")
    baselines: tuple[str, ...] = BASELINES
    index_types: tuple[str, ...] = ("Flat",)
    # Also measure this project's refinement (edge band, mean direction removed).
    mean_direction: bool = True
    # Key-token sparse rows (one per unfiltered / edge / nomean variant), BM25, and
    # hybrids of the best dense variant (nomean, else edge) at `hybrid_tau` with each,
    # fused every way at fixed settings and with the setting chosen by `cv_folds`-fold
    # cross-validation over the queries (retriever.evaluation.tuning).
    sparse: bool = True
    sparse_spec: SparseSpec = field(default_factory=SparseSpec)
    bm25: bool = True
    hybrid_tau: float = 2
    fusions: tuple[str, ...] = FUSIONS
    cv_folds: int = 5
    alignment: bool = True
    k: int = 100
    fit_sample: int = 100_000
    latency_queries: int = 100
    warmup: int = 5
    seed: int = 0
    # Where FAISS indexes are built and searched; each row records where it ran.
    gpu: GpuOptions = field(default_factory=GpuOptions)
    # Keep every row's index folder here (one subfolder per setting), named in its row,
    # instead of deleting it once measured.
    keep_indexes: Path | None = None

    def __post_init__(self) -> None:
        for band in self.bands:
            if band not in BANDS:
                raise RetrieverError(f"unknown band {band!r}; choose from {', '.join(BANDS)}")
        for baseline in self.baselines:
            if baseline not in BASELINES:
                raise RetrieverError(
                    f"unknown baseline {baseline!r}; choose from {', '.join(BASELINES)}"
                )
        for tau in self.taus:
            FilterSpec(tau=tau)  # validates the range
        for fusion in self.fusions:
            if fusion not in FUSIONS:
                raise RetrieverError(f"unknown fusion {fusion!r}; choose from {', '.join(FUSIONS)}")
        for index_type in self.index_types:
            parse_index_type(index_type)  # validates the backend and its type
        if parse_index_type(self.index_types[0]).backend != "faiss":
            raise RetrieverError(
                "the first --index-types entry is the hybrids' dense index and the base of the "
                f"ratios: give a FAISS type first (got {self.index_types[0]!r})"
            )


@dataclass
class Variant:
    """One projection to measure, with the labels its rows carry."""

    method: str
    band: str | None
    tau: float
    projection: EmbedFilter = field(repr=False)

    @property
    def name(self) -> str:
        """A file-name-safe label, unique within a setting."""
        return f"{self.method}-{self.band or 'na'}-tau{self.tau:g}"

    def is_hybrid_part(self, settings: BenchSettings) -> bool:
        """The dense variant the hybrids fuse: the best measured (nomean, else edge) at
        ``hybrid_tau``."""
        method = "embedfilter-nomean" if settings.mean_direction else "embedfilter"
        return (
            self.method == method
            and self.band in ("edge", None)
            and self.tau == settings.hybrid_tau
        )

    def has_key_tokens(self, settings: BenchSettings) -> bool:
        """Key-token rows come from the unfiltered, edge and nomean vectors."""
        edge = self.method == "embedfilter" and self.band == "edge"
        return settings.sparse and (self.method in ("unfiltered", "embedfilter-nomean") or edge)


def build_variants(
    spectrum: UnembeddingSpectrum, documents: np.ndarray, settings: BenchSettings
) -> list[Variant]:
    """The unfiltered row, then for each tau > 1 every band, the refinement and baselines."""
    rng = np.random.default_rng(settings.seed)
    sample_rows = rng.choice(
        len(documents), size=min(len(documents), settings.fit_sample), replace=False
    )
    sample = documents[np.sort(sample_rows)]
    variants = [
        Variant(
            "unfiltered",
            None,
            1,
            EmbedFilter.from_unembedding(spectrum, FilterSpec(tau=1, remove_mean_direction=False)),
        )
    ]
    for tau in settings.taus:
        spec = FilterSpec(tau=tau)
        if settings.mean_direction:
            refined = FilterSpec(tau=tau, remove_mean_direction=True)
            variants.append(
                Variant(
                    "embedfilter-nomean",
                    "edge",
                    tau,
                    EmbedFilter.from_unembedding(spectrum, refined),
                )
            )
        if tau == 1:
            continue
        for band in settings.bands:
            banded = FilterSpec(tau=tau, band=band, seed=settings.seed, remove_mean_direction=False)
            variants.append(
                Variant("embedfilter", band, tau, EmbedFilter.from_unembedding(spectrum, banded))
            )
        k = spec.kept_dims(spectrum.model_dim)
        for method in settings.baselines:
            variants.append(
                Variant(method, None, tau, fit_baseline(method, sample, k, seed=settings.seed))
            )
    return variants


def parse_index_type(index_type: str) -> DenseSpec:
    """``TYPE`` (FAISS) or ``milvus:TYPE`` (Milvus Lite) as a dense spec, checked."""
    kind, _, factory = index_type.rpartition(":")
    spec = DenseSpec(backend=kind or "faiss", index_type=factory)
    check_dense_spec(spec)
    return spec
