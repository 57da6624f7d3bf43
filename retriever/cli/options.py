"""Option groups that several subcommands share, declared once, and what they turn into."""

from __future__ import annotations

import argparse
from typing import Any

from retriever.core.config import (
    DEFAULT_STORE_PRECISION,
    DTYPES,
    FUSIONS,
    METHODS,
    POOLINGS,
    PROMPTS,
    STORE_PRECISIONS,
    EncoderConfig,
    SparseSpec,
)
from retriever.core.errors import RetrieverError

DEFAULT_MODEL = "smollm2-135m"  # kept in step with retriever.encode.models.DEFAULT_MODEL by a test

Container = argparse._ActionsContainer


def add_model_options(
    parser: argparse.ArgumentParser, *, from_index: bool, with_source: bool = True
) -> None:
    """--model, --dtype, --device, --batch-size; with_source adds where the weights come from.

    from_index: the model is the one the index was built with (add, search, lens, eval).
    """
    group = parser.add_argument_group("model")
    if from_index:
        group.add_argument(
            "--model",
            default=None,
            help="load this model instead of the one named in the manifest (its weights "
            "must be the same, e.g. a local copy)",
        )
        group.add_argument(
            "--dtype",
            choices=DTYPES,
            default=None,
            help="weights dtype (default: the one the index was built with, so queries are "
            "encoded like its documents)",
        )
    else:
        group.add_argument(
            "--model",
            default=DEFAULT_MODEL,
            help=f"bundled alias ({DEFAULT_MODEL}), local model folder, or Hugging Face hub "
            "id (default: %(default)s)",
        )
        if with_source:
            _add_weights_source_options(group)
        group.add_argument(
            "--dtype",
            choices=DTYPES,
            default="auto",
            help="weights dtype; auto = bfloat16 on a GPU or a CPU with AVX-512 BF16/AMX, "
            "float32 otherwise (default: %(default)s)",
        )
    group.add_argument("--device", default=None, help="torch device (default: cuda if present)")
    group.add_argument(
        "--batch-size",
        type=int,
        default=16,
        metavar="N",
        help="texts per forward pass (default: %(default)s)",
    )


def _add_weights_source_options(group: Container) -> None:
    group.add_argument("--revision", default=None, help="hub revision (branch, tag, commit)")
    group.add_argument(
        "--unembedding-from",
        metavar="MODEL",
        default=None,
        help="take the unembedding matrix from this model (for embedding models "
        "without an LM head: give the LLM they were trained from)",
    )


_PROMPT_TEMPLATES = (
    'prompteol = \'This sentence : "{text}" means in one word:"\', echo = text twice, pooled '
    "over the second copy, none = bare text"
)


def add_encoding_options(
    parser: argparse.ArgumentParser, *, queries: bool, lists: bool = False
) -> None:
    """--prompt, --max-length, --document-instruction and, when the encoding also serves
    queries, --pooling and --query-instruction.

    lists: --prompt and --pooling take comma lists (bench compares them), and the
    instructions, which the benchmark does not vary, are left out.
    """
    encoding = parser.add_argument_group("encoding")
    if lists:
        _add_setting_lists(encoding)
    else:
        _add_setting(encoding, queries=queries)
    encoding.add_argument(
        "--max-length",
        type=int,
        default=256,
        metavar="N",
        help="tokens per input including the prompt; longer texts keep their head and "
        "tail halves (default: %(default)s)",
    )
    if lists:
        return
    if queries:
        encoding.add_argument(
            "--query-instruction",
            default="",
            metavar="TEXT",
            help="text put before every query's prompt",
        )
    encoding.add_argument(
        "--document-instruction",
        default="",
        metavar="TEXT",
        help="text put before every document's prompt",
    )


def _add_setting(group: Container, *, queries: bool) -> None:
    group.add_argument(
        "--prompt",
        choices=list(PROMPTS),
        default="prompteol",
        help=f"prompt template: {_PROMPT_TEMPLATES} (default: %(default)s)",
    )
    if queries:
        group.add_argument(
            "--pooling",
            choices=POOLINGS,
            default="mean",
            help="mean over the prompted tokens, or the last token (default: %(default)s; "
            "the store keeps the one asked)",
        )


def _add_setting_lists(group: Container) -> None:
    # Checked when the run starts (EncoderConfig), so no argparse choices.
    group.add_argument(
        "--prompt",
        default="prompteol",
        metavar="PROMPTS",
        help=f"comma list of prompt templates among {', '.join(PROMPTS)}: "
        f"{_PROMPT_TEMPLATES} (default: %(default)s)",
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
    return EncoderConfig(
        prompt=args.prompt,
        pooling=getattr(args, "pooling", "mean"),
        max_length=args.max_length,
        query_instruction=getattr(args, "query_instruction", ""),
        document_instruction=args.document_instruction,
    )


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
    when = "stored as the index's default" if at_build else "default: the index's"
    group.add_argument(
        "--nprobe",
        type=int,
        default=None,
        metavar="N",
        help=f"IVF lists searched per query ({when}; faiss's own default is 1)",
    )
    group.add_argument(
        "--ef-search",
        type=int,
        default=None,
        metavar="N",
        help=f"HNSW candidate list size per query ({when}; faiss's own default is 16)",
    )
    if not at_build:  # at build, `index --rescore` also decides to keep the rescore vectors
        group.add_argument(
            "--rescore",
            type=int,
            default=None,
            metavar="M",
            help="re-score the M x k best candidates with the int8 vectors of an index built "
            "with --rescore (default: the index's)",
        )


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


def add_sparse_size_options(
    group: Container, *, from_index: bool = False, query_note: str = ""
) -> None:
    """--sparse-doc-tokens and --sparse-query-tokens; from_index: only the query side,
    defaulting to what the index was built with."""
    if from_index:
        group.add_argument(
            "--sparse-query-tokens",
            type=int,
            default=None,
            metavar="M",
            help="aligned tokens added to the query for the sparse index (default: the index's)",
        )
        return
    defaults = SparseSpec()
    group.add_argument(
        "--sparse-doc-tokens",
        type=int,
        default=defaults.doc_tokens,
        metavar="K",
        help="aligned tokens kept per document (default: %(default)s)",
    )
    group.add_argument(
        "--sparse-query-tokens",
        type=int,
        default=defaults.query_tokens,
        metavar="M",
        help=f"aligned tokens added to a query's own tokens{query_note} (default: %(default)s)",
    )


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
    without an option skips its check; Searcher.load checks nprobe, ef-search, rescore)."""
    weight = getattr(args, "dense_weight", None)
    if weight is not None and not 0.0 <= weight <= 1.0:  # NaN fails too
        raise RetrieverError(f"--dense-weight must lie in [0, 1], got {weight}")
    tokens = getattr(args, "sparse_query_tokens", None)
    if tokens is not None and tokens < 0:
        raise RetrieverError(f"--sparse-query-tokens must be >= 0, got {tokens}")


def load_searcher(args: argparse.Namespace) -> Any:
    """The index's Searcher with the model and FAISS options given on the command line."""
    from retriever.search.searcher import Searcher

    check_search_options(args)
    return Searcher.load(
        args.index,
        model=args.model,
        dtype=args.dtype,
        device=args.device,
        batch_size=args.batch_size,
        nprobe=getattr(args, "nprobe", None),
        ef_search=getattr(args, "ef_search", None),
        rescore=getattr(args, "rescore", None),
        use_gpu=gpu_options(args) if hasattr(args, "gpu") else None,
    )


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
        "pip install 'retriever[onnx]'; exported once per model into the cache). ONNX "
        "Runtime was faster than torch float32 where measured (docs/builds.md); where the "
        "CPU has bfloat16, torch in bfloat16 is faster still (default: %(default)s)",
    )
