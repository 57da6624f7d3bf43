"""``retriever add``: add documents to an index (new ids, or replacements with --upsert)."""

from __future__ import annotations

import argparse

from retriever.cli.formatting import add_command
from retriever.cli.options import add_model_options, add_store_options


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = add_command(
        commands,
        "add",
        summary="add documents to an index (new ids, or replace with --upsert)",
        description="Encode a corpus with the index's own model and settings and append it "
        "to every part of the index (dense, sparse, BM25, docstore) in a new generation, "
        "swapped in atomically. Ids already in the index are refused unless --upsert "
        "replaces them. BM25 is rebuilt over the whole collection (its statistics change).",
    )
    parser.add_argument("index", help="index path built by `retriever index`")
    parser.add_argument(
        "dataset",
        help="BEIR dataset folder or JSONL file of documents to add, or beir:NAME "
        "(`retriever datasets`)",
    )
    parser.add_argument(
        "--upsert", action="store_true", help="replace documents whose id is already indexed"
    )
    add_store_options(parser, with_limit=True, with_restart=False)
    add_model_options(parser, from_index=True)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from retriever.index.changes import add_documents
    from retriever.index.options import BuildOptions

    options = BuildOptions(
        limit=args.limit,
        batch_size=args.batch_size,
        device=args.device,
        store=args.store,
        chunk_size=args.chunk_size,
        store_precision=args.store_precision,
    )
    result = add_documents(
        args.index,
        args.dataset,
        upsert=args.upsert,
        options=options,
        model=args.model,
        dtype=args.dtype,
    )
    print(f"{args.index}: {result['added']} added, {result['replaced']} replaced")
    return 0
