"""Option groups that several subcommands share, declared once, and what they turn into.

An index's settings are not declared here: each is a field of the spec
(:mod:`retriever.core.spec`) that declares its flag, help and choices, and
:func:`add_spec_options` and :func:`spec_from_args` turn those declarations into
arguments and back into a spec.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Iterable
from typing import Any, TypeVar

from retriever.core.config import (
    DEFAULT_STORE_PRECISION,
    FUSIONS,
    METHODS,
    POOLINGS,
    PROMPTS,
    STORE_PRECISIONS,
)
from retriever.core.errors import RetrieverError
from retriever.core.spec import (
    DenseSpec,
    EncoderConfig,
    FilterSpec,
    IndexSpec,
    ModelSpec,
    SearchParams,
    SparseSpec,
    Spec,
    flag_of,
)

SpecT = TypeVar("SpecT", bound=Spec)
Container = argparse._ActionsContainer
_VALUE_TYPES = (int, float, str)


def add_spec_options(
    group: Container,
    spec_class: type[Spec],
    *,
    only: Iterable[str] | None = None,
    override: bool = False,
    note: str = "",
) -> None:
    """One argument per field of ``spec_class`` that declares a flag (its flag, help,
    choices and default come from the field). ``override``: every default is None, the
    value an index was built with (commands that read an index); ``note`` ends each help."""
    hints = typing.get_type_hints(spec_class)
    chosen = set(only) if only is not None else None
    for spec_field in dataclasses.fields(spec_class):
        declared = flag_of(spec_field)
        if declared is None or (chosen is not None and spec_field.name not in chosen):
            continue
        default = None if override else spec_field.default
        kinds = set(typing.get_args(hints[spec_field.name])) or {hints[spec_field.name]}
        kwargs: dict[str, Any] = {"dest": declared.dest, "default": default}
        if bool in kinds:
            optional = type(None) in kinds or override
            kwargs["action"] = argparse.BooleanOptionalAction if optional else "store_true"
        else:
            kwargs["type"] = next(t for t in _VALUE_TYPES if t in kinds)
            kwargs["choices"] = declared.choices
            kwargs["metavar"] = declared.metavar
        kwargs["help"] = _spec_help(declared.help, default, override, note)
        group.add_argument(declared.flag, **kwargs)


def _spec_help(text: str, default: Any, override: bool, note: str) -> str:
    if note:
        text = f"{text}; {note}"
    if override:
        return f"{text} (default: the index's)"
    if default in (None, "") or isinstance(default, bool) or "default:" in text.lower():
        return text
    return f"{text} (default: %(default)s)"


def spec_from_args(spec_class: type[SpecT], args: argparse.Namespace, **given: Any) -> SpecT:
    """The spec the parsed arguments declare; fields whose flag a command does not take,
    and arguments left None where the spec's default is wanted, keep the default.
    ``given``: fields set by the caller (nested parts)."""
    values = dict(given)
    for spec_field in dataclasses.fields(spec_class):
        declared = flag_of(spec_field)
        if declared is None or spec_field.name in values:
            continue
        value = getattr(args, declared.dest, None)
        if value is not None:
            values[spec_field.name] = value
    return spec_class(**values)


def index_spec(args: argparse.Namespace) -> IndexSpec:
    """The index spec of `retriever index`'s arguments."""
    dense = None
    if not args.no_dense:
        dense = spec_from_args(DenseSpec, args, search=spec_from_args(SearchParams, args))
    return IndexSpec(
        model=spec_from_args(ModelSpec, args),
        encoder=encoder_config(args),
        filter=spec_from_args(FilterSpec, args),
        dense=dense,
        sparse=spec_from_args(SparseSpec, args) if args.sparse else None,
        bm25=args.bm25,
    )


def add_part_flags(group: Container, part: str) -> None:
    """The flag that adds (or drops) a whole part of an index (IndexSpec.PART_FLAGS)."""
    declared = IndexSpec.PART_FLAGS[part]
    group.add_argument(declared.flag, action="store_true", help=declared.help)


def add_model_options(
    parser: argparse.ArgumentParser, *, from_index: bool, with_source: bool = True
) -> None:
    """The model's spec flags, --device and --batch-size; with_source adds where the
    weights come from (--revision, --unembedding-from).

    from_index: the model is the one the index was built with (add, search, lens, eval);
    --model then loads a copy of the same weights from elsewhere.
    """
    group = parser.add_argument_group("model")
    only = ("name", "dtype") if from_index or not with_source else None
    note = "its weights must be the index's (a local copy)" if from_index else ""
    add_spec_options(group, ModelSpec, only=only, override=from_index, note=note)
    group.add_argument("--device", default=None, help="torch device (default: cuda if present)")
    group.add_argument(
        "--batch-size",
        type=int,
        default=16,
        metavar="N",
        help="texts per forward pass (default: %(default)s)",
    )


def add_encoding_options(
    parser: argparse.ArgumentParser, *, queries: bool, lists: bool = False
) -> None:
    """The encoder's spec flags; without ``queries`` (encode) no pooling or query
    instruction. lists: --prompt and --pooling take comma lists (bench compares them),
    and the instructions, which the benchmark does not vary, are left out."""
    encoding = parser.add_argument_group("encoding")
    if lists:
        _add_setting_lists(encoding)
        add_spec_options(encoding, EncoderConfig, only=("max_length",))
        return
    skipped = set() if queries else {"pooling", "query_instruction"}
    kept = [f.name for f in dataclasses.fields(EncoderConfig) if f.name not in skipped]
    add_spec_options(encoding, EncoderConfig, only=kept)


def _add_setting_lists(group: Container) -> None:
    # Checked when the run starts (EncoderConfig), so no argparse choices.
    group.add_argument(
        "--prompt",
        default="prompteol",
        metavar="PROMPTS",
        help=f"comma list of prompt templates among {', '.join(PROMPTS)} (default: %(default)s)",
    )
    group.add_argument(
        "--pooling",
        default="mean",
        metavar="POOLINGS",
        help=f"comma list of poolings among {', '.join(POOLINGS)}; they share one forward "
        "pass (default: %(default)s)",
    )


def encoder_config(args: argparse.Namespace) -> EncoderConfig:
    """The encoding options as the API's config (encode has no pooling or query options)."""
    return spec_from_args(EncoderConfig, args)


def add_limit_option(group: Container) -> None:
    group.add_argument(
        "--limit",
        type=int,
        default=None,
        metavar="N",
        help="only the first N documents in file order",
    )


def add_store_options(
    parser: argparse.ArgumentParser,
    *,
    with_limit: bool,
    with_store: bool = True,
    with_restart: bool = True,
) -> None:
    group = parser.add_argument_group("embedding store")
    if with_limit:
        add_limit_option(group)
    if with_store:
        group.add_argument(
            "--store",
            metavar="DIR",
            default=None,
            help="keep the raw embeddings in this store folder (default: a folder in "
            "~/.cache/retriever/embeddings/ named by the model, settings and corpus hash, "
            "shared by every command that encodes the same corpus the same way)",
        )
    group.add_argument(
        "--chunk-size",
        type=int,
        default=None,
        metavar="N",
        help="documents per shard, the unit of resuming (a kill loses at most the shard in "
        "progress): default, about two minutes of encoding each, from the rate measured on "
        "the first batches; a store keeps the size it was created with",
    )
    group.add_argument(
        "--store-precision",
        choices=STORE_PRECISIONS,
        default=DEFAULT_STORE_PRECISION,
        help="precision of the raw embeddings kept in the store: float16 halves it (cosine "
        "to float32 and nDCG@10 are measured in docs/builds.md) (default: %(default)s)",
    )
    if with_restart:
        group.add_argument(
            "--restart",
            action="store_true",
            help="empty a store that holds another encoding (or a partial one) and encode "
            "afresh, instead of refusing or resuming",
        )


def add_split_option(parser: Container) -> None:
    parser.add_argument(
        "--split",
        default="test",
        help="qrels split: the dataset's qrels/SPLIT.tsv (default: %(default)s; "
        "`retriever datasets` shows a cached beir:NAME's splits)",
    )


def add_ray_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Ray (optional: pip install 'retriever[ray]')")
    group.add_argument(
        "--ray",
        nargs="?",
        const="local",
        default=None,
        metavar="ADDRESS",
        help="encode on Ray Data actors instead of this process: no ADDRESS starts a local "
        "Ray with this machine's cores, 'auto' or ray://HOST:PORT joins a cluster (workers "
        "must see the corpus and the store at the same paths)",
    )
    group.add_argument(
        "--ray-workers",
        type=int,
        default=None,
        metavar="N",
        help="model actors (default: one per GPU, or half the CPUs without GPUs)",
    )
    group.add_argument(
        "--ray-gpus-per-worker",
        type=float,
        default=None,
        metavar="G",
        help="GPUs per actor (default: 1 when the cluster has GPUs, else 0)",
    )


def ray_options(args: argparse.Namespace) -> Any:
    """The Ray options as the API's RayOptions, or None without --ray."""
    if args.ray is None:
        return None
    from retriever.store.on_ray import RayOptions

    if args.ray_workers is not None and args.ray_workers < 1:
        raise RetrieverError(f"--ray-workers must be at least 1, got {args.ray_workers}")
    from retriever.store.on_ray import import_ray

    import_ray()  # says how to install Ray before the model loads
    return RayOptions(
        address=None if args.ray == "local" else args.ray,
        workers=args.ray_workers,
        gpus_per_worker=args.ray_gpus_per_worker,
        device=args.device,
    )


def add_search_param_options(group: Container, *, at_build: bool) -> None:
    """--nprobe, --ef-search, --rescore: stored as the index's defaults at build (where
    --rescore also keeps the rescore vectors), else overriding them."""
    if at_build:
        add_spec_options(group, SearchParams, note="stored as the index's default")
    else:
        add_spec_options(group, SearchParams, override=True)


def search_params(args: argparse.Namespace) -> SearchParams:
    """The search parameters given on the command line (None: the index's)."""
    return spec_from_args(SearchParams, args)


def add_gpu_options(group: Container) -> None:
    group.add_argument(
        "--gpu",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="build and search FAISS indexes on the GPU (needs faiss-gpu: pip install "
        "'retriever[gpu]'); --no-gpu keeps the CPU (default: the GPU when faiss sees one, "
        "else the CPU; the log says which, and why)",
    )
    group.add_argument(
        "--gpu-ids",
        default=None,
        metavar="IDS",
        help="comma list of GPUs to use, e.g. 0,1 (default: all visible)",
    )
    group.add_argument(
        "--gpu-placement",
        choices=("replicate", "shard"),
        default="replicate",
        help="on several GPUs: replicate (each holds the whole index, for throughput) or "
        "shard (each holds a slice, for an index larger than one GPU) (default: %(default)s)",
    )
    group.add_argument(
        "--gpu-float16",
        action="store_true",
        help="store vectors in float16 on the GPU (half the memory; scores carry float16 "
        "rounding). IVF-PQ always uses float16 lookup tables on the GPU",
    )


def gpu_options(args: argparse.Namespace) -> Any:
    """The GPU options as the API's GpuOptions."""
    from retriever.parts.dense.gpu import GpuOptions, parse_gpu_ids

    return GpuOptions(
        enabled=args.gpu,
        ids=parse_gpu_ids(args.gpu_ids) if args.gpu_ids else None,
        placement=args.gpu_placement,
        float16=args.gpu_float16,
    )


def add_sparse_query_option(group: Container) -> None:
    """--sparse-query-tokens of a search, defaulting to what the index was built with."""
    add_spec_options(group, SparseSpec, only=("query_tokens",), override=True)


def add_method_options(parser: argparse.ArgumentParser, *, lists: bool) -> None:
    """--method(s), --fusion and --dense-weight; lists: comma lists (eval runs them all)."""
    group = parser.add_argument_group("method")
    if lists:
        group.add_argument(
            "--methods",
            default=None,
            help=f"comma list among {', '.join(METHODS)} (default: every method the index answers)",
        )
    else:
        group.add_argument(
            "--method",
            choices=METHODS,
            default=None,
            help="dense (FAISS), sparse (key tokens), bm25, or a hybrid fusing dense with one "
            "of them (default: dense, or what the index holds)",
        )
    add_fusion_option(group, lists=lists)
    group.add_argument(
        "--dense-weight",
        type=float,
        default=0.5,
        metavar="W",
        help="dense share of a weighted fusion, in [0, 1] (default: %(default)s)",
    )


def add_fusion_option(group: Container, *, lists: bool) -> None:
    meaning = "rrf = reciprocal rank (k=60), weighted = weighted sum of min-max normalised scores"
    if lists:
        group.add_argument(
            "--fusion",
            default=",".join(FUSIONS),
            metavar="FUSIONS",
            help=f"comma list of fusions for the hybrid methods: {meaning} (default: %(default)s)",
        )
    else:
        group.add_argument(
            "--fusion",
            choices=FUSIONS,
            default="rrf",
            help=f"hybrid fusion: {meaning} (default: %(default)s)",
        )


def check_search_options(args: argparse.Namespace) -> None:
    """Refuse search settings out of range before the index and its model load (a command
    without an option skips its check)."""
    weight = getattr(args, "dense_weight", None)
    if weight is not None and not 0.0 <= weight <= 1.0:  # NaN fails too
        raise RetrieverError(f"--dense-weight must lie in [0, 1], got {weight}")
    query_tokens = flag_of(SparseSpec.__dataclass_fields__["query_tokens"])
    query_tokens.check(getattr(args, query_tokens.dest, None))
    if hasattr(args, "nprobe"):
        search_params(args)


def load_searcher(args: argparse.Namespace) -> Any:
    """The index's Searcher with the model and FAISS options given on the command line."""
    from retriever.index.manifest import current_manifest
    from retriever.search.searcher import Searcher, check_method

    check_search_options(args)
    manifest = current_manifest(args.index)  # the methods asked, before the model loads
    for method in _asked_methods(args):
        check_method(method, manifest.spec.parts, manifest.folder)
    return Searcher.load(
        args.index,
        model=args.model,
        dtype=args.dtype,
        device=args.device,
        batch_size=args.batch_size,
        search=search_params(args) if hasattr(args, "nprobe") else None,
        use_gpu=gpu_options(args) if hasattr(args, "gpu") else None,
    )


def _asked_methods(args: argparse.Namespace) -> list[str]:
    """The search methods a command line asks for (search's --method, eval's --methods)."""
    from retriever.cli.lists import comma_list

    if getattr(args, "methods", None):
        return comma_list(args.methods)
    method = getattr(args, "method", None)
    return [method] if method else []


def parse_poolings(value: str) -> list[str]:
    """``--pooling`` of ``encode``: a comma list of known poolings, each once."""
    from retriever.cli.lists import comma_list

    poolings = list(dict.fromkeys(comma_list(value)))
    unknown = [p for p in poolings if p not in POOLINGS]
    if not poolings or unknown:
        raise RetrieverError(
            f"--pooling takes a comma list among {', '.join(POOLINGS)}, got {value!r}"
        )
    return poolings


def add_runtime_option(parser: argparse.ArgumentParser) -> None:
    """--runtime: what runs the transformer while documents are encoded."""
    parser.add_argument(
        "--runtime",
        choices=("torch", "onnx"),
        default="torch",
        help="run the transformer in torch, or in ONNX Runtime (float32 on the CPU; "
        "pip install 'retriever[onnx]'; exported once per model into the cache). Whether "
        "it beats torch float32 depends on the CPU: on an AVX2-only one it did not "
        "(docs/builds.md), so time both on yours (default: %(default)s)",
    )
