"""``retriever bench``: EmbedFilter against the unfiltered index and fitted baselines."""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path
from typing import Any

from retriever.cli.formatting import OldFormAction, add_command
from retriever.cli.lists import INDEX_TYPES_RULE, comma_list, split_index_types
from retriever.cli.options import (
    add_encoding_options,
    add_fusion_option,
    add_gpu_options,
    add_limit_option,
    add_model_options,
    add_sparse_size_options,
    add_split_option,
    gpu_options,
)
from retriever.core.config import EncoderConfig, SparseSpec
from retriever.core.errors import RetrieverError
from retriever.data.catalog import dataset_label

_DEFAULT_SIZES = "10000,100000,1000000"


class _IndexTypes(OldFormAction):
    """--index-types Flat,IVF64,Flat,HNSW32; the old space-separated form
    (--index-types Flat IVF64,Flat HNSW32) still parses."""

    documented_nargs = None

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs="+", **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        setattr(
            namespace, self.dest, [kind for value in values for kind in split_index_types(value)]
        )


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = add_command(
        commands,
        "bench",
        summary="benchmark EmbedFilter against the unfiltered index and fitted baselines",
        description="Encode the corpus and queries once per prompt (cached on disk), then "
        "build, search and score every variant side by side: the unfiltered index, "
        "EmbedFilter for every band and tau, the mean-direction refinement, and the PCA, "
        "whitening, all-but-the-top and random-projection baselines. Writes results.json, "
        "results.md, plot.png and gzipped TREC runs to --out.\n\n"
        "With --scaling, measure instead search latency, QPS and bytes against collection "
        "size; the flags that only shape the variant table are refused there.",
        examples="""\
            examples:
              retriever bench beir:scifact --pooling mean,last \\
                  --out benchmarks/results/scifact-smollm2
              retriever bench beir:scifact --index-types Flat,IVF256,PQ16
              retriever bench beir:scifact --scaling --sizes 10000,100000
            """,
    )
    parser.add_argument(
        "dataset",
        help="BEIR dataset folder (corpus, queries, qrels/), or beir:NAME (downloaded into "
        "the cache on first use; `retriever datasets` lists the names)",
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        default=None,
        help="results folder (default: benchmarks/results/<dataset>-<model>, with "
        "-scaling after it for --scaling)",
    )
    add_split_option(parser)
    add_limit_option(parser)
    add_model_options(parser, from_index=False, with_source=False)
    add_encoding_options(parser, queries=True, lists=True)
    variants = parser.add_argument_group("variants")
    variants.add_argument(
        "--taus", default="1,2,4,8", help="comma list of tau values (default: %(default)s)"
    )
    _add_table_options(parser, variants)
    add_gpu_options(parser.add_argument_group("FAISS on GPUs"))
    _add_scaling_options(parser.add_argument_group("scaling mode"))
    parser.set_defaults(run=run)


def _add_table_options(parser: argparse.ArgumentParser, variants: Any) -> None:
    """The options that shape the variant table only: --scaling refuses them."""
    variants.add_argument(
        "--bands",
        default="edge,head,tail",
        help="comma list of EmbedFilter bands (default: %(default)s)",
    )
    variants.add_argument(
        "--baselines",
        default="pca,whiten,abtt,random",
        help="comma list of fitted baselines, or 'none' (default: %(default)s)",
    )
    variants.add_argument(
        "--remove-mean-direction",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure the rows of the mean-direction refinement (embedfilter-nomean; "
        "see `retriever index --remove-mean-direction`); --no-remove-mean-direction "
        "measures only the paper's EmbedFilter (default: on)",
    )
    variants.add_argument(
        "--no-mean-direction",
        dest="remove_mean_direction",
        action="store_false",
        help=argparse.SUPPRESS,  # the old spelling of --no-remove-mean-direction
    )
    variants.add_argument(
        "--index-types",
        action=_IndexTypes,
        default=["Flat"],
        metavar="TYPES",
        help="comma list of faiss.index_factory strings, and milvus:TYPE for Milvus Lite; "
        f"{INDEX_TYPES_RULE} (default: Flat)",
    )
    variants.add_argument(
        "-k", type=int, default=100, help="hits per query in the runs (default: %(default)s)"
    )
    variants.add_argument(
        "--keep-indexes",
        metavar="DIR",
        default=None,
        help="keep every row's index folder under DIR/PROMPT-POOLING/ (each row names its "
        "folder in results.json), to search them with `retriever search` or `eval`; by "
        "default each is deleted once measured",
    )
    _add_lexical_options(parser.add_argument_group("sparse, BM25, hybrids and token alignment"))


def _add_lexical_options(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--sparse",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="measure the key-token sparse rows (built from the unfiltered, edge and nomean "
        "vectors) and the dense+keytokens hybrids (default: on)",
    )
    group.add_argument(
        "--bm25",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="measure the BM25 row and the dense+bm25 hybrids (default: on)",
    )
    add_sparse_size_options(group)
    group.add_argument(
        "--hybrid-tau",
        type=float,
        default=2,
        metavar="TAU",
        help="tau of the dense index the hybrids fuse: edge band, mean direction removed "
        "(plain edge with --no-remove-mean-direction); the default is the best dense "
        "variant in benchmarks/results/scifact-smollm2/results.md (default: %(default)s)",
    )
    add_fusion_option(group, lists=True)
    group.add_argument(
        "--cv-folds",
        type=int,
        default=5,
        metavar="N",
        help="also fuse each hybrid with the setting (weighted or RRF, weight, RRF k) chosen "
        "by N-fold cross-validation over the queries, so no query is scored with a setting "
        "tuned on its own labels; a fold keeps a blend only when an inner cross-validation "
        "on its training queries shows a significant gain over the better single retriever; "
        "0 skips it (default: %(default)s)",
    )
    group.add_argument(
        "--alignment",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="measure the token-alignment metrics of the documents, raw vs each filter "
        "(default: on)",
    )


def _add_scaling_options(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--scaling",
        action="store_true",
        help="instead of the variant table, measure search latency, QPS and bytes against "
        "collection size: the dataset's document vectors (one --prompt, one --pooling) "
        "tiled to each --sizes with small noise, Flat and IVF-PQ, one line per EmbedFilter "
        "dimension (--taus)",
    )
    group.add_argument(
        "--sizes",
        default=_DEFAULT_SIZES,
        help="comma list of collection sizes for --scaling (default: %(default)s)",
    )


def run(args: argparse.Namespace) -> int:
    prompts, poolings = comma_list(args.prompt), comma_list(args.pooling)
    if not prompts or not poolings:
        raise RetrieverError("--prompt and --pooling each need at least one value")
    for prompt, pooling in itertools.product(prompts, poolings):
        EncoderConfig(prompt=prompt, pooling=pooling, max_length=args.max_length)
    taus = _numbers(args.taus, float, "--taus must be numbers separated by commas")
    out = args.out or (
        f"benchmarks/results/{dataset_label(args.dataset)}-{Path(args.model).name}"
        + ("-scaling" if args.scaling else "")
    )
    if args.scaling:
        return _run_scaling(args, out, taus, prompts, poolings)
    if args.sizes != _DEFAULT_SIZES:
        raise RetrieverError("--sizes applies only with --scaling")
    return _run_table(args, out, taus, prompts, poolings)


def _run_table(
    args: argparse.Namespace,
    out: str,
    taus: tuple[float, ...],
    prompts: list[str],
    poolings: list[str],
) -> int:
    from retriever.evaluation.bench import BenchSettings, run_bench

    settings = BenchSettings(
        taus=taus,
        bands=tuple(comma_list(args.bands)),
        baselines=() if args.baselines == "none" else tuple(comma_list(args.baselines)),
        index_types=tuple(args.index_types),
        mean_direction=args.remove_mean_direction,
        sparse=args.sparse,
        sparse_spec=SparseSpec(args.sparse_doc_tokens, args.sparse_query_tokens),
        bm25=args.bm25,
        hybrid_tau=args.hybrid_tau,
        cv_folds=args.cv_folds,
        fusions=tuple(comma_list(args.fusion)),
        alignment=args.alignment,
        k=args.k,
        gpu=gpu_options(args),
        keep_indexes=None if args.keep_indexes is None else Path(args.keep_indexes),
    )
    run_bench(
        args.dataset,
        out,
        model=args.model,
        prompts=prompts,
        poolings=poolings,
        max_length=args.max_length,
        dtype=args.dtype,
        device=args.device,
        batch_size=args.batch_size,
        split=args.split,
        limit=args.limit,
        settings=settings,
        command=args.command_line,
    )
    print(Path(out) / "results.md")
    return 0


def _run_scaling(
    args: argparse.Namespace,
    out: str,
    taus: tuple[float, ...],
    prompts: list[str],
    poolings: list[str],
) -> int:
    _refuse_table_flags(args)
    if len(prompts) > 1 or len(poolings) > 1:
        raise RetrieverError("--scaling measures one setting: give one --prompt and --pooling")
    sizes = _numbers(args.sizes, int, "--sizes must be integers")
    from retriever.evaluation.bench import run_scaling_bench

    run_scaling_bench(
        args.dataset,
        out,
        model=args.model,
        prompt=prompts[0],
        pooling=poolings[0],
        max_length=args.max_length,
        dtype=args.dtype,
        device=args.device,
        batch_size=args.batch_size,
        split=args.split,
        limit=args.limit,
        sizes=sizes,
        taus=taus,
        gpu=gpu_options(args),
        command=args.command_line,
    )
    print(Path(out) / "scaling.md")
    return 0


def _numbers(value: str, kind: type, message: str) -> tuple[Any, ...]:
    try:
        return tuple(kind(item) for item in comma_list(value))
    except ValueError:
        raise RetrieverError(f"{message}, got {value!r}") from None


def _refuse_table_flags(args: argparse.Namespace) -> None:
    """--scaling measures one table of its own: a variant-table flag would be ignored."""
    probe = argparse.ArgumentParser(add_help=False)
    _add_table_options(probe, probe)
    given: dict[str, str] = {}
    for action in probe._actions:
        value = getattr(args, action.dest)
        if action.help != argparse.SUPPRESS and value != action.default:
            negated = isinstance(action, argparse.BooleanOptionalAction) and not value
            given.setdefault(action.dest, action.option_strings[1 if negated else 0])
    if given:
        raise RetrieverError(
            f"--scaling does not use {', '.join(given.values())}: they shape the variant "
            "table; drop them, or run without --scaling"
        )
