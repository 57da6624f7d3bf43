"""``retriever search``: search an index folder and print the best documents."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

from retriever.cli.formatting import add_command, one_line, printable
from retriever.cli.options import (
    add_gpu_options,
    add_method_options,
    add_model_options,
    add_search_param_options,
    add_sparse_query_option,
    load_searcher,
)
from retriever.core.config import DISPLAY_SPACE, SPACES
from retriever.core.errors import RetrieverError


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = add_command(
        commands,
        "search",
        summary="search an index folder",
        description="Encode a query with the index's model, prompt and filter, and print "
        "the best documents.",
    )
    parser.add_argument("index", help="index folder built by `retriever index`")
    parser.add_argument("query", help="the query text")
    parser.add_argument("-k", type=int, default=10, help="number of hits (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print hits as JSON")
    add_method_options(parser, lists=False)
    faiss = parser.add_argument_group("FAISS")
    add_search_param_options(faiss, at_build=False)
    add_gpu_options(faiss)
    add_sparse_query_option(parser)
    _add_explain_options(parser.add_argument_group("explain"))
    add_model_options(parser, from_index=True)
    parser.set_defaults(run=run)


def _add_explain_options(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--explain",
        action="store_true",
        help="under each hit, the words it shares with the query among both their top "
        "aligned words (whole words; stopwords and punctuation are left out of the display, "
        "not the math). Read in --explain-space",
    )
    group.add_argument(
        "--explain-space",
        choices=SPACES,
        default=DISPLAY_SPACE,
        help="the lens space --explain reads: raw W h or filtered W F^T F h. The default is "
        "the one whose displayed top 10 holds a word of the text more often on SciFact "
        "(benchmarks/results/lens-display/lens_display.md) (default: %(default)s)",
    )
    group.add_argument(
        "--explain-top",
        type=int,
        default=50,
        metavar="N",
        help="how many top aligned tokens of each side --explain compares (default: %(default)s)",
    )


def run(args: argparse.Namespace) -> int:
    from retriever.search.searcher import check_queries

    check_queries([args.query])
    if args.k < 1:
        raise RetrieverError(f"-k must be at least 1, got {args.k}")
    if args.explain_top < 1:
        raise RetrieverError(f"--explain-top must be at least 1, got {args.explain_top}")
    searcher = load_searcher(args)
    hits = searcher.search(
        args.query,
        k=args.k,
        method=args.method,
        fusion=args.fusion,
        dense_weight=args.dense_weight,
        sparse_query_tokens=args.sparse_query_tokens,
    )
    shared = (
        searcher.shared_tokens(args.query, hits, top=args.explain_top, space=args.explain_space)
        if args.explain
        else None
    )
    if args.json:
        _print_json(hits, shared)
    elif not hits:
        # Said, where an empty listing would look like a failure.
        held = "" if len(searcher) else f": {args.index} holds no documents"
        print(f"no hits{held}")
    else:
        _print_hits(args, hits, shared)
    return 0


def _print_json(hits: Sequence[Any], shared: list[Sequence[Any]] | None) -> None:
    records = [hit.to_dict() for hit in hits]
    for record, tokens in zip(records, shared or [], strict=False):
        record["shared_tokens"] = [token.to_dict() for token in tokens]
    print(json.dumps(records, ensure_ascii=False, indent=2))


def _print_hits(
    args: argparse.Namespace, hits: Sequence[Any], shared: list[Sequence[Any]] | None
) -> None:
    # Reciprocal-rank scores are sums of 1/(60 + rank): they differ in the 5th decimal.
    digits = 6 if "+" in (args.method or "") and args.fusion == "rrf" else 4
    for rank, hit in enumerate(hits, start=1):
        snippet = one_line(hit.text)
        # One line per hit: an id is escaped (it must stay exact), a title only joined.
        print(f"{rank:>3}. {hit.score:.{digits}f}  {printable(hit.id)}  {one_line(hit.title)}")
        if snippet:
            print(f"     {snippet[:160]}{'...' if len(snippet) > 160 else ''}")
        if shared is not None:
            print(f"     shared tokens: {_token_list(shared[rank - 1])}")


def _token_list(tokens: Sequence[Any]) -> str:
    return " ".join(repr(token.token) for token in tokens) or "(none)"
