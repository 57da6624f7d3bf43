"""``retriever lens``: the tokens an embedding aligns with, raw and filtered."""

from __future__ import annotations

import argparse
import itertools
import json

from retriever.cli.formatting import add_command
from retriever.cli.options import add_model_options, load_searcher
from retriever.core.config import SPACES
from retriever.core.errors import RetrieverError


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = add_command(
        commands,
        "lens",
        summary="show the tokens an embedding aligns with, raw and filtered",
        description="Token lens: rank the vocabulary by W h (the raw embedding) and by "
        "W F^T F h (the filtered vector the index stores, mapped back to model space) and "
        "print the top words side by side: whole-word tokens, with stopwords and "
        "punctuation left out of the display (--all-tokens shows the plain ranking).\n\n"
        "With --texts, measure instead how well the top aligned tokens match the words of "
        "each text (Hit@10, content Hit@10, local and global alignment rate, share of "
        "stopwords/punctuation in the top 10, and displayed Hit@10: content Hit@10 of "
        "exactly the words shown), raw vs filtered.",
        examples="""\
            examples:
              retriever lens indexes/scifact "vitamin D and bone density"
              retriever lens indexes/scifact --texts beir:scifact --limit 500
            """,
    )
    parser.add_argument("index", help="index folder built by `retriever index`")
    parser.add_argument("text", nargs="?", help="a text, encoded as a query")
    parser.add_argument(
        "--texts",
        metavar="PATH",
        help="instead of one text: alignment metrics over a BEIR folder (or beir:NAME), a "
        "corpus JSONL file, or a .txt file with one text per line (encoded as documents)",
    )
    parser.add_argument(
        "--limit", type=int, default=None, metavar="N", help="with --texts, the first N texts"
    )
    parser.add_argument("--top", type=int, default=20, help="tokens shown (default: %(default)s)")
    parser.add_argument(
        "--all-tokens",
        action="store_true",
        help="show the plain ranking, sub-words, stopwords and punctuation included",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    add_model_options(parser, from_index=True)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if (args.text is None) == (args.texts is None):
        raise RetrieverError("give either one TEXT or --texts PATH")
    if args.top < 1:
        raise RetrieverError(f"--top must be at least 1, got {args.top}")
    if args.text is not None:
        if args.limit is not None:
            raise RetrieverError("--limit applies only with --texts")
        if not args.text.strip():
            raise RetrieverError("empty text: give some text to look at")
        return _show_text(args)
    return _measure_texts(args)


def _show_text(args: argparse.Namespace) -> int:
    explanation = load_searcher(args).explain(
        args.text, top=args.top, words_only=not args.all_tokens
    )
    if args.json:
        print(json.dumps(explanation, ensure_ascii=False, indent=2))
        return 0
    print(f"{'rank':>4}  {'raw W h':<28} {'filtered W F^T F h':<28}")
    # Words only: a column may run out of words within the ranks searched.
    for rank, (raw, filtered) in enumerate(
        itertools.zip_longest(explanation["raw"], explanation["filtered"]), start=1
    ):
        left = f"{raw['token']!r} {raw['score']:.3f}" if raw else ""
        right = f"{filtered['token']!r} {filtered['score']:.3f}" if filtered else ""
        print(f"{rank:>4}  {left:<28} {right:<28}")
    return 0


def _measure_texts(args: argparse.Namespace) -> int:
    from retriever.data.datasets import load_texts
    from retriever.encode.lens import alignment_metrics

    texts = load_texts(args.texts, limit=args.limit)
    searcher = load_searcher(args)
    embeddings = searcher.encoder.encode_documents(texts)
    token_ids = searcher.encoder.text_token_ids(texts)
    report = {
        space: alignment_metrics(searcher.lens, embeddings, token_ids, space) for space in SPACES
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{'metric':<24} {'raw':>8} {'filtered':>9}")
    for metric in report["raw"]:
        raw, filtered = report["raw"][metric], report["filtered"][metric]
        if isinstance(raw, int):
            print(f"{metric:<24} {raw:>8} {filtered:>9}")
        else:
            print(f"{metric:<24} {raw:>8.4f} {filtered:>9.4f}")
    return 0
