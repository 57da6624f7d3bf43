"""``retriever eval``: score an index on a BEIR dataset's queries and judgements."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from retriever.cli.formatting import OldFormAction, add_command
from retriever.cli.lists import comma_list
from retriever.cli.options import (
    add_gpu_options,
    add_method_options,
    add_model_options,
    add_search_param_options,
    add_split_option,
    check_search_options,
    load_searcher,
)
from retriever.core.errors import RetrieverError


class _JsonSwitch(OldFormAction):
    """--json prints the report as JSON, as search and lens do; the old ``--json FILE``
    still writes the file (now --json-out FILE).

    So a word right after --json is taken as the old form's FILE: the switch goes after
    the INDEX and DATASET arguments, as in every example.
    """

    documented_nargs = 0

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs="?", **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        value: Any,
        option_string: str | None = None,
    ) -> None:
        if value is None:
            setattr(namespace, self.dest, True)
        else:
            namespace.json_out = value


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = add_command(
        commands,
        "eval",
        summary="evaluate an index on a BEIR dataset's queries and judgements",
        description="Search every judged query of a split with every method the index "
        "answers (dense, key-token sparse, BM25, hybrids) and report nDCG@10 (headline), "
        "nDCG@100, Recall@100 and MAP@100 (pytrec_eval), per-query latency split into "
        "query encoding and search (median, p95), batched QPS, and the bytes each method "
        "reads.",
    )
    parser.add_argument("index", help="index folder built by `retriever index`")
    parser.add_argument(
        "dataset",
        help="BEIR dataset folder with queries.jsonl and qrels/SPLIT.tsv, or beir:NAME "
        "(downloaded into the cache on first use; `retriever datasets` lists the names)",
    )
    add_split_option(parser)
    parser.add_argument(
        "-k", type=int, default=100, help="hits per query in the run (default: %(default)s)"
    )
    parser.add_argument(
        "--json",
        action=_JsonSwitch,
        default=False,
        help="print the report as JSON instead of the table",
    )
    parser.add_argument(
        "--json-out", metavar="FILE", default=None, help="also write the report as JSON to FILE"
    )
    parser.add_argument(
        "--runs", metavar="DIR", help="write one gzipped TREC run per method into DIR"
    )
    add_method_options(parser, lists=True)
    faiss = parser.add_argument_group("FAISS")
    add_search_param_options(faiss, at_build=False)
    add_gpu_options(faiss)
    add_model_options(parser, from_index=True)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from retriever.evaluation.report import Judged, check_report_settings, evaluation_report

    check_search_options(args)
    # Checked before the queries run: the report comes at the end of a long evaluation.
    if args.json_out and not Path(args.json_out).parent.is_dir():
        raise RetrieverError(f"--json-out {args.json_out}: its folder does not exist")
    fusions = comma_list(args.fusion)
    check_report_settings(args.k, fusions)
    judged = Judged.load(args.dataset, args.split)  # read and checked before the model loads
    report = evaluation_report(
        load_searcher(args),
        judged,
        k=args.k,
        methods=comma_list(args.methods) if args.methods else None,
        fusions=fusions,
        dense_weight=args.dense_weight,
        runs=args.runs,
    )
    if args.json_out:
        try:
            Path(args.json_out).write_text(json.dumps(report, indent=2) + "\n")
        except OSError as exc:
            raise RetrieverError(f"cannot write --json-out {args.json_out}: {exc}") from None
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_table(report["rows"], args.split)
    return 0


def _print_table(rows: list[dict[str, Any]], split: str) -> None:
    print(
        f"{'method':<14} {'fusion':<8} {'nDCG@10':>8} {'nDCG@100':>8} {'R@100':>7} "
        f"{'encode ms':>9} {'search ms':>9} {'QPS':>8} {'bytes':>13}"
    )
    for row in rows:
        print(
            f"{row['method']:<14} {row['fusion'] or '':<8} {row['ndcg_at_10']:>8.4f} "
            f"{row['ndcg_at_100']:>8.4f} {row['recall_at_100']:>7.4f} "
            f"{row['encode_ms_p50']:>9.2f} {row['search_ms_p50']:>9.3f} "
            f"{row['batch_qps']:>8.1f} {row['index_bytes']:>13,}"
        )
    print(f"{rows[0]['queries']} judged queries ({split}); latencies are medians per query")
