"""``retriever scaling``: search latency, QPS and bytes against collection size.

``retriever bench ... --scaling``, the spelling before this command, is read as
``retriever scaling ...`` (results folders record it).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from retriever.cli.bench import bench_model
from retriever.cli.formatting import add_command
from retriever.cli.lists import numbers
from retriever.cli.options import (
    add_encoding_options,
    add_gpu_options,
    add_limit_option,
    add_model_options,
    add_split_option,
    gpu_options,
)
from retriever.data.catalog import dataset_label

OLD_FLAG = "--scaling"


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = add_command(
        commands,
        "scaling",
        summary="search latency, QPS and bytes against collection size",
        description="Encode the dataset's documents once, tile their vectors to each --sizes "
        "with small noise, and measure Flat and IVF-PQ search latency, QPS and bytes at "
        "each size, one line per EmbedFilter dimension (--taus). Writes scaling.json, "
        "scaling.md and scaling.png to --out.",
        examples="""\
            examples:
              retriever scaling beir:scifact --sizes 10000,100000
            """,
    )
    parser.add_argument(
        "dataset",
        help="BEIR dataset folder (corpus, queries, qrels/), or beir:NAME (`retriever "
        "datasets` lists the names)",
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        default=None,
        help="results folder (default: benchmarks/results/<dataset>-<model>-scaling)",
    )
    add_split_option(parser)
    add_limit_option(parser)
    add_model_options(parser, from_index=False, with_source=False)
    add_encoding_options(parser, queries=True, lists=False)
    parser.add_argument(
        "--taus", default="1,2,4,8", help="comma list of tau values (default: %(default)s)"
    )
    parser.add_argument(
        "--sizes",
        default="10000,100000,1000000",
        help="comma list of collection sizes (default: %(default)s)",
    )
    add_gpu_options(parser.add_argument_group("FAISS on GPUs"))
    parser.set_defaults(run=run)


def old_spelling(argv: list[str]) -> list[str]:
    """``bench ... --scaling ...`` as ``scaling ...``; any other command line as it is."""
    if argv[:1] == ["bench"] and OLD_FLAG in argv:
        return ["scaling", *(arg for arg in argv[1:] if arg != OLD_FLAG)]
    return argv


def run(args: argparse.Namespace) -> int:
    from retriever.evaluation.bench import ScalingSettings, run_scaling_bench

    taus = numbers(args.taus, float, "--taus must be numbers separated by commas")
    sizes = numbers(args.sizes, int, "--sizes must be integers")
    out = args.out or (
        f"benchmarks/results/{dataset_label(args.dataset)}-{Path(args.model).name}-scaling"
    )
    model = bench_model(args, [args.prompt], [args.pooling])
    scaling = ScalingSettings(sizes=sizes, taus=taus, gpu=gpu_options(args))
    run_scaling_bench(
        args.dataset,
        out,
        model,
        scaling,
        split=args.split,
        limit=args.limit,
        command=args.command_line,
    )
    print(Path(out) / "scaling.md")
    return 0
