"""``retriever add``: add documents to an index (new ids, or replacements with --upsert)."""

from __future__ import annotations

import argparse
from pathlib import Path

from retriever.cli.formatting import add_command
from retriever.cli.options import add_model_options, add_store_options
from retriever.core.errors import RetrieverError


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
    from retriever.core.generations import current_generation, refuse_inside_index
    from retriever.data.datasets import corpus_file
    from retriever.index.build import Indexer
    from retriever.index.manifest import load_encoder_for, read_manifest

    # Cheap checks before the model loads; the corpus's lines (ids included) are checked
    # when it is scanned, before anything is encoded.
    if args.chunk_size is not None and args.chunk_size < 1:
        raise RetrieverError(f"--chunk-size must be at least 1, got {args.chunk_size}")
    if args.limit is not None and args.limit < 1:
        raise RetrieverError(f"--limit must be a positive number of documents, got {args.limit}")
    corpus_file(args.dataset)
    if args.store is not None:
        refuse_inside_index(args.store, "--store")
    out = Path(args.index).expanduser().absolute()
    base = current_generation(out)
    if base is None:
        raise RetrieverError(f"{out} is not an index built by `retriever index`")
    manifest = read_manifest(base)
    encoder = load_encoder_for(
        manifest,
        base,
        model=args.model,
        dtype=args.dtype,
        device=args.device,
        batch_size=args.batch_size,
    )
    result = Indexer(encoder).add(
        out,
        args.dataset,
        upsert=args.upsert,
        limit=args.limit,
        store=args.store,
        chunk_size=args.chunk_size,
        store_precision=args.store_precision,
    )
    print(f"{out}: {result['added']} added, {result['replaced']} replaced")
    return 0
