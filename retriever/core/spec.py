"""What an index is: one typed, nested spec, saved in its manifest as written.

    IndexSpec
      model    ModelSpec       which weights, at which dtype
      encoder  EncoderConfig   prompt, pooling, max length, instructions
      filter   FilterSpec      the EmbedFilter's size, band and refinement
      dense    DenseSpec       backend, index type, storage, build knobs, search defaults
      sparse   SparseSpec      the key-token index
      bm25     bool            the BM25 index

Each setting is one dataclass field. Its metadata (:func:`setting`) declares the command
line's flag, help and choices, and the one check of its value, so that the parser, the
validation and the manifest all come from the field. :class:`Spec` gives every part one
``to_dict``/``from_dict``; ``IndexSpec.from_dict(spec.to_dict()) == spec``.

Settings that do not change what an index is (device, batch size, runtime, store
location, overwrite) are not here: they are the build's options
(:class:`retriever.index.build.BuildOptions`), never saved.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

from retriever.core.config import (
    BACKENDS,
    BANDS,
    BINARY_CENTRES,
    DEFAULT_COLLECTION,
    DEFAULT_RABITQ_BITS,
    DEFAULT_STORAGE,
    DEFAULT_STORAGE_REASON,
    DTYPES,
    POOLINGS,
    PROMPTS,
    RABITQ_BITS,
    RESCORE_PRECISIONS,
    SPACES,
    STORAGES,
)
from retriever.core.errors import RetrieverError

DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class Flag:
    """How one setting appears on the command line, and the check of its value."""

    flag: str
    help: str
    choices: tuple[str, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    metavar: str | None = None
    # The noun an unknown value is called in errors ("unknown pooling 'x'"); default: flag.
    noun: str | None = None

    @property
    def dest(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")

    def check(self, value: Any, name: str | None = None) -> None:
        """Refuse a value out of its choices or range; ``name`` is what the message calls
        the setting (default: the flag; a manifest's reader names the field)."""
        if value is None:
            return
        if self.choices is not None and value not in self.choices:
            raise RetrieverError(
                f"unknown {name or self.noun or self.flag} {value!r}; "
                f"choose one of {', '.join(self.choices)}"
            )
        if self.minimum is not None:
            name = name or self.flag
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise RetrieverError(f"{name} must be a number, got {value!r}")
            if not value >= self.minimum:  # NaN fails too
                raise RetrieverError(f"{name} must be at least {self.minimum:g}, got {value}")
        if self.maximum is not None and value > self.maximum:
            name = name or self.flag
            raise RetrieverError(f"{name} must be at most {self.maximum:g}, got {value}")


def setting(default: Any, flag: str, help: str, **declared: Any) -> Any:
    """A spec field with its flag, help and check (see :class:`Flag`)."""
    return field(default=default, metadata={"flag": Flag(flag, help, **declared)})


def flag_of(spec_field: dataclasses.Field) -> Flag | None:
    return spec_field.metadata.get("flag")


class Spec:
    """One ``to_dict``/``from_dict`` and the declared checks, for every part of the spec."""

    def __post_init__(self) -> None:
        for spec_field in dataclasses.fields(self):
            declared = flag_of(spec_field)
            if declared is not None:
                declared.check(getattr(self, spec_field.name))

    def to_dict(self) -> dict[str, Any]:
        return {
            f.name: _plain(getattr(self, f.name))
            for f in dataclasses.fields(self)  # type: ignore[arg-type]
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], path: str | None = None) -> Any:
        """The spec ``to_dict`` wrote; fields a newer writer added are refused by name,
        fields an older one lacked take their defaults. ``path`` (a manifest's key, such
        as ``spec``) names a bad value by its field, not by a flag nobody passed."""
        where = path or cls.__name__
        if not isinstance(data, dict):
            raise RetrieverError(f"{where} should be a JSON object, got {data!r}")
        known = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise RetrieverError(f"{where} has no setting {', '.join(unknown)}")
        hints = typing.get_type_hints(cls)
        values = {}
        for name, value in data.items():
            field_path = f"{path}.{name}" if path else None
            part = _spec_class(hints[name])
            if part is not None and value is not None:
                value = part.from_dict(value, field_path)
            elif path is not None and flag_of(known[name]) is not None:
                flag_of(known[name]).check(value, field_path)
            values[name] = value
        return cls(**values)


def _plain(value: Any) -> Any:
    return value.to_dict() if isinstance(value, Spec) else value


def _spec_class(hint: Any) -> type[Spec] | None:
    """The Spec class a field holds (``X`` or ``X | None``), if any."""
    candidates = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, Spec):
            return candidate
    return None


@dataclass(frozen=True)
class ModelSpec(Spec):
    """Which model encodes: its name as given, and the dtype asked for (the manifest's
    ``model`` also records what the build found: the weights' hash, the dtype ``auto``
    chose, the hidden size)."""

    name: str = setting(
        DEFAULT_MODEL,
        "--model",
        f"bundled alias ({DEFAULT_MODEL}), local model folder, .gguf file or Hugging Face hub id",
    )
    revision: str | None = setting(None, "--revision", "hub revision (branch, tag, commit)")
    dtype: str = setting(
        "auto",
        "--dtype",
        "weights dtype; auto = bfloat16 on a GPU or a CPU with AVX-512 BF16/AMX, float32 otherwise",
        choices=DTYPES,
    )
    unembedding_from: str | None = setting(
        None,
        "--unembedding-from",
        "take the unembedding matrix from this model (for embedding models without an LM "
        "head: give the LLM they were trained from)",
        metavar="MODEL",
    )


_PROMPT_TEMPLATES = (
    'prompteol = \'This sentence : "{text}" means in one word:"\', echo = text twice, pooled '
    "over the second copy, none = bare text"
)


@dataclass(frozen=True)
class EncoderConfig(Spec):
    """How text becomes a pooled embedding (everything the manifest must pin)."""

    prompt: str = setting(
        "prompteol",
        "--prompt",
        f"prompt template: {_PROMPT_TEMPLATES}",
        choices=tuple(PROMPTS),
        noun="prompt style",
    )
    pooling: str = setting(
        "mean",
        "--pooling",
        "mean over the prompted tokens, or the last token (the store keeps the one asked)",
        choices=POOLINGS,
        noun="pooling",
    )
    max_length: int = setting(
        256,
        "--max-length",
        "tokens per input including the prompt; longer texts keep their head and tail halves",
        minimum=16,
        metavar="N",
    )
    query_instruction: str = setting(
        "", "--query-instruction", "text put before every query's prompt", metavar="TEXT"
    )
    document_instruction: str = setting(
        "", "--document-instruction", "text put before every document's prompt", metavar="TEXT"
    )


@dataclass(frozen=True)
class FilterSpec(Spec):
    """Which EmbedFilter to build: size by ``tau`` (k = d // tau) or by ``dim`` (k = dim);
    with neither, ``tau`` is 2.

    ``band`` is ``edge``, ``head``, ``tail`` or ``rand``; ``start`` overrides it with an
    explicit first row. ``tau == 1`` (or ``dim == d``) is the identity: the unfiltered
    baseline.

    ``remove_mean_direction`` (this project's data-free refinement, docs/method.md)
    is on by default: it is the best data-free variant measured on SciFact (nDCG@10 0.310
    against the paper's exact EmbedFilter 0.251, mean pooling, tau 2, bf16). ``False`` gives
    the paper's EmbedFilter; ``None`` means the default, off at ``tau == 1`` so that tau 1
    stays the unfiltered baseline.
    """

    tau: float | None = setting(
        None, "--tau", "keep d // tau dimensions; 1 = unfiltered baseline (default: 2)"
    )
    dim: int | None = setting(
        None, "--dim", "keep exactly this many dimensions", minimum=1, metavar="N"
    )
    band: str = setting(
        "edge",
        "--band",
        "which singular directions to keep: edge = middle band (drops the top and the "
        "bottom equally), tail = top k, head = bottom k, rand = random k",
        choices=BANDS,
        noun="band",
    )
    start: int | None = setting(
        None, "--start", "explicit first kept direction (overrides --band)", minimum=0
    )
    seed: int = setting(0, "--seed", "seed of --band rand")
    # After the band, project out the direction of the mean unembedding row seen through
    # the filter (see the docstring).
    remove_mean_direction: bool | None = setting(
        None,
        "--remove-mean-direction",
        "after the band, also project out the direction of the mean unembedding row seen "
        "through the filter: this project's data-free refinement (how it compares: "
        "benchmarks/results/scifact-smollm2/results.md). --no-remove-mean-direction builds "
        "the paper's exact EmbedFilter (default: on, except at --tau 1, the unfiltered "
        "baseline)",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.tau is not None and self.dim is not None:
            raise RetrieverError("give exactly one of --tau and --dim")
        if self.tau is None and self.dim is None:
            object.__setattr__(self, "tau", 2.0)
        if not (self.tau is None or (self.tau >= 1 and math.isfinite(self.tau))):
            raise RetrieverError(
                f"--tau must be a finite number >= 1 (1 keeps every dimension), got {self.tau}"
            )
        if self.remove_mean_direction is None:
            object.__setattr__(self, "remove_mean_direction", self.tau != 1)

    def kept_dims(self, model_dim: int) -> int:
        """The number k of directions kept for a model of hidden size ``model_dim``."""
        k = int(model_dim // self.tau) if self.tau is not None else int(self.dim)
        if not 1 <= k <= model_dim:
            asked = f"--tau {self.tau:g}" if self.tau is not None else f"--dim {self.dim}"
            raise RetrieverError(
                f"{asked} keeps {k} of the model's {model_dim} dimensions; "
                f"it must keep between 1 and {model_dim}"
            )
        return k


@dataclass(frozen=True)
class SearchParams(Spec):
    """Search-time settings of approximate indexes: stored as an index's defaults, and
    given per searcher to override them. Each is at least 1; None: the index's (or
    FAISS's) own."""

    nprobe: int | None = setting(
        None,
        "--nprobe",
        "IVF lists searched per query (faiss's own default is 1)",
        minimum=1,
        metavar="N",
    )
    ef_search: int | None = setting(
        None,
        "--ef-search",
        "HNSW candidate list size per query (faiss's own default is 16)",
        minimum=1,
        metavar="N",
    )
    # M: the first stage fetches M x k candidates, re-scored with the rescore vectors.
    rescore: int | None = setting(
        None,
        "--rescore",
        "re-score the M x k best candidates of the compact codes with the float query, "
        "using the rescore vectors an index built with --rescore keeps",
        minimum=1,
        metavar="M",
    )

    def __post_init__(self) -> None:
        for spec_field in dataclasses.fields(self):
            value = getattr(self, spec_field.name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise RetrieverError(
                    f"{flag_of(spec_field).flag} must be a whole number, got {value!r}"
                )
        super().__post_init__()

    def faiss(self) -> dict[str, int | None]:
        """The names the dense backends take: FAISS's ``efSearch``."""
        return {"nprobe": self.nprobe, "efSearch": self.ef_search, "rescore": self.rescore}

    @classmethod
    def from_faiss(cls, params: dict[str, int | None]) -> SearchParams:
        """The parameters a backend is given under FAISS's names, checked like any other."""
        names = {"nprobe": "nprobe", "efSearch": "ef_search", "rescore": "rescore"}
        unknown = sorted(set(params) - set(names))
        if unknown:
            raise RetrieverError(f"unknown search parameter {', '.join(unknown)}")
        return cls(**{names[name]: value for name, value in params.items()})

    def over(self, defaults: SearchParams) -> SearchParams:
        """These parameters, each unset one taken from ``defaults`` (``is None``, not
        ``or``: a given value is never taken for unset)."""
        return SearchParams(
            **{
                f.name: getattr(defaults, f.name)
                if getattr(self, f.name) is None
                else getattr(self, f.name)
                for f in dataclasses.fields(self)
            }
        )


@dataclass(frozen=True)
class DenseSpec(Spec):
    """The dense part: where the vectors live, their index structure and storage, the
    knobs that build it and the search defaults it keeps."""

    backend: str = setting(
        "faiss",
        "--backend",
        "where the dense vectors live: faiss (index.faiss in the folder) or milvus (pip "
        "install 'retriever[milvus]'; Lite: Flat or IVFn,Flat)",
        choices=BACKENDS,
        noun="backend",
    )
    index_type: str = setting(
        "Flat",
        "--index-type",
        "Flat (exact), HNSWm (graph; m links per node, default 32) or IVFn (n lists), "
        "holding --storage codes; or any faiss.index_factory string that names its own "
        "codes, e.g. IVF256,PQ16 (inner product on normalised vectors); with --backend "
        "milvus on a server also a Milvus index name such as HNSW or GPU_CAGRA",
        metavar="TYPE",
    )
    # None: the default for Flat, HNSWm and IVFn, or the codes a factory string names.
    storage: str | None = setting(
        None,
        "--storage",
        "how each filtered vector is stored: float32, float16 (FAISS fp16), int8 (FAISS "
        "SQ8: per-dimension ranges from up to 100,000 sampled documents), binary (1 bit "
        "per dimension, Hamming search) or rabitq (FAISS RaBitQ: --bits per dimension "
        "plus two floats, inner products estimated against the float query; centred on "
        "the sampled documents' mean, or each IVF list's centroid). Default: "
        f"{DEFAULT_STORAGE}; {DEFAULT_STORAGE_REASON}",
        choices=STORAGES,
    )
    bits: int | None = setting(
        None,
        "--bits",
        f"with --storage rabitq: bits per dimension, {RABITQ_BITS[0]} to {RABITQ_BITS[1]} "
        f"(default {DEFAULT_RABITQ_BITS}); each code keeps d x bits / 8 bytes plus 8",
        minimum=RABITQ_BITS[0],
        maximum=RABITQ_BITS[1],
        metavar="B",
    )
    binary_centre: str = setting(
        "documents",
        "--binary-centre",
        "with --storage binary, a bit is x > centre: the mean of the sampled documents, "
        "or zero (the sign; needs no data)",
        choices=BINARY_CENTRES,
    )
    rescore_vectors: str = setting(
        "int8",
        "--rescore-vectors",
        "with --rescore, the vectors kept for the second stage: int8 (1 byte per "
        "dimension) or float32 (4 bytes; exact scores)",
        choices=RESCORE_PRECISIONS,
    )
    ef_construction: int | None = setting(
        None,
        "--ef-construction",
        "HNSW candidate list size while building (faiss's own default is 40; Milvus HNSWm: 200)",
        minimum=1,
        metavar="N",
    )
    milvus_uri: str | None = setting(
        None,
        "--milvus-uri",
        "with --backend milvus: http://HOST:19530 for a Milvus standalone or cluster "
        "(default: a Milvus Lite database inside the index folder)",
        metavar="URI",
    )
    collection: str = setting(
        DEFAULT_COLLECTION,
        "--collection",
        "with --backend milvus: the collection name. On a server it is an alias of the "
        "current generation's collection NAME__<generation>, switched on every build, add "
        "and delete",
    )
    # Stored as the index's defaults; --rescore M here also keeps the rescore vectors.
    search: SearchParams = field(default_factory=SearchParams)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.bits is not None and self.storage != "rabitq":
            raise RetrieverError("--bits applies to --storage rabitq")
        if self.backend == "milvus":
            if self.storage == "binary" and self.binary_centre != "zero":
                raise RetrieverError(
                    "Milvus binary codes are thresholded at zero: add --binary-centre zero, "
                    "or use --backend faiss for a centre from the documents"
                )
            if self.search.rescore:
                raise RetrieverError(
                    "--rescore keeps vectors beside a FAISS index; Milvus has no such second "
                    "stage here: build with --backend faiss"
                )
        elif self.milvus_uri is not None or self.collection != DEFAULT_COLLECTION:
            raise RetrieverError("--milvus-uri and --collection apply to --backend milvus")

    @property
    def rabitq_bits(self) -> int | None:
        """Bits per dimension of RaBitQ codes (None: the storage is not rabitq)."""
        if self.storage != "rabitq":
            return None
        return self.bits or DEFAULT_RABITQ_BITS

    @property
    def rescore_precision(self) -> str | None:
        """The precision of the rescore vectors the index keeps (None: it keeps none)."""
        return self.rescore_vectors if self.search.rescore else None


@dataclass(frozen=True)
class SparseSpec(Spec):
    """The key-token sparse index: ``doc_tokens`` (K) kept per document, ``query_tokens``
    (M) aligned tokens added to each query, read from the ``space`` vector."""

    doc_tokens: int = setting(
        1000, "--sparse-doc-tokens", "aligned tokens kept per document", minimum=1, metavar="K"
    )
    query_tokens: int = setting(
        50,
        "--sparse-query-tokens",
        "aligned tokens added to a query's own tokens; search can override it",
        minimum=0,
        metavar="M",
    )
    space: str = setting(
        "filtered",
        "--sparse-space",
        "align tokens with the filtered vector the index stores (F^T F h) or the raw embedding h",
        choices=SPACES,
        noun="sparse space",
    )


@dataclass(frozen=True)
class IndexSpec(Spec):
    """Everything that makes an index what it is; the manifest keeps it as written.

    ``dense`` None: no dense part (the index answers with sparse and/or BM25 only);
    ``sparse`` None: no key-token part.
    """

    model: ModelSpec = field(default_factory=ModelSpec)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    filter: FilterSpec = field(default_factory=FilterSpec)
    dense: DenseSpec | None = field(default_factory=DenseSpec)
    sparse: SparseSpec | None = None
    bm25: bool = False

    # The flags that add or drop a whole part (the parts' own flags set their insides).
    PART_FLAGS: ClassVar[dict[str, Flag]] = {
        "dense": Flag(
            "--no-dense",
            "write no dense index: the folder answers only with --sparse and/or --bm25",
        ),
        "sparse": Flag(
            "--sparse",
            "also store each document as its top-K aligned tokens "
            "(weights e_t . x through the unembedding matrix) in an inverted "
            "index (sparse/)",
        ),
        "bm25": Flag(
            "--bm25",
            "also store a BM25 index of the documents' words (bm25s; "
            "English stopwords and stemmer) for the lexical baseline and dense+bm25 "
            "hybrids (bm25/)",
        ),
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (self.dense or self.sparse or self.bm25):
            raise RetrieverError("--no-dense leaves nothing to search: add --sparse and/or --bm25")

    @property
    def parts(self) -> tuple[str, ...]:
        held = {"dense": self.dense, "sparse": self.sparse, "bm25": self.bm25}
        return tuple(part for part, present in held.items() if present)
