"""``retriever bench``: EmbedFilter against the unfiltered index and fitted baselines."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from retriever.cli.formatting import OldFormAction, add_command
from retriever.cli.lists import INDEX_TYPES_RULE, comma_list, numbers, split_index_types
from retriever.cli.options import (
    add_encoding_options,
    add_fusion_option,
    add_gpu_options,
    add_limit_option,
    add_model_options,
    add_spec_options,
    add_split_option,
    gpu_options,
)
from retriever.core.spec import SparseSpec
from retriever.data.catalog import dataset_label


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
        "whitening, all-but-the-top and random-projection baselines. Writes results.json "
        "(each nDCG ratio with its paired bootstrap interval over the queries), "
        "per_query.jsonl, meta.json (with the machine record), results.md, plot.png, and "
        "gzipped TREC runs in runs/ with their checksums in runs.sha256, to --out. "
        "(`retriever scaling` measures latency and bytes against collection size.)",
        examples="""\
            examples:
              retriever bench beir:scifact --pooling mean,last \\
                  --out benchmarks/results/scifact-smollm2
              retriever bench beir:scifact --index-types Flat,IVF256,PQ16
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
        help="results folder (default: benchmarks/results/<dataset>-<model>)",
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
    parser.set_defaults(run=run)


def _add_table_options(parser: argparse.ArgumentParser, variants: Any) -> None:
    """The options that shape the variant table."""
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
    add_spec_options(group, SparseSpec, only=("doc_tokens", "query_tokens"))
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


def run(args: argparse.Namespace) -> int:
    prompts, poolings = comma_list(args.prompt), comma_list(args.pooling)
    taus = numbers(args.taus, float, "--taus must be numbers separated by commas")
    out = args.out or f"benchmarks/results/{dataset_label(args.dataset)}-{Path(args.model).name}"
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
    model = bench_model(args, prompts, poolings)
    run_bench(
        args.dataset,
        out,
        model,
        settings,
        split=args.split,
        limit=args.limit,
        command=args.command_line,
    )
    print(Path(out) / "results.md")
    return 0


def bench_model(args: argparse.Namespace, prompts: Sequence[str], poolings: Sequence[str]) -> Any:
    """The benchmark's model and encodings (a BenchModel) from the command line."""
    from retriever.evaluation.bench import BenchModel

    return BenchModel(
        name=args.model,
        prompts=tuple(prompts),
        poolings=tuple(poolings),
        max_length=args.max_length,
        dtype=args.dtype,
        device=args.device,
        batch_size=args.batch_size,
    )
