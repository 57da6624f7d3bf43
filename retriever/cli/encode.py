"""``retriever encode``: encode a collection, or one slice of it, into an embedding store."""

from __future__ import annotations

import argparse

from retriever.cli.formatting import add_command
from retriever.cli.options import (
    add_encoding_options,
    add_model_options,
    add_ray_options,
    add_runtime_option,
    add_store_options,
    encoder_config,
    parse_poolings,
    ray_options,
)


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = add_command(
        commands,
        "encode",
        summary="encode a collection (or one slice of it) into an embedding store",
        description="Encode documents into an embedding store: raw pooled embeddings "
        "(the poolings asked, float16 unless --store-precision float32) in one shard per "
        "chunk of documents, with the documents beside them. A new store's chunks take "
        "about two minutes of encoding each, from the rate measured on the first batches "
        "(--chunk-size fixes them); one log line gives the rate, the expected time and the "
        "disk needed before the long work, and a disk too small is refused.\n\n"
        "--shard I/N encodes only the chunks c with c % N == I, so N processes or machines "
        "can share a corpus; `retriever index --from STORE` assembles the index once every "
        "chunk is present. A rerun skips complete chunks.",
        examples="""\
            example (three processes, then one assembly):
              for i in 0 1 2; do retriever encode corpus.jsonl --out store --shard $i/3 & done
              wait; retriever index --from store --out indexes/corpus
            """,
    )
    parser.add_argument(
        "dataset",
        help="BEIR dataset folder, beir:NAME (`retriever datasets`) or JSONL file of documents",
    )
    parser.add_argument("--out", required=True, metavar="STORE", help="embedding store folder")
    parser.add_argument(
        "--shard",
        default="0/1",
        metavar="I/N",
        help="encode slice I of N (chunks c with c %% N == I; default: %(default)s, all)",
    )
    parser.add_argument(
        "--pooling",
        default="mean",
        metavar="POOLINGS",
        help="comma list of the poolings to keep, among mean and last (one forward pass "
        "pools both; an index reads one) (default: %(default)s)",
    )
    add_store_options(parser, with_limit=True, with_store=False)
    add_model_options(parser, from_index=False)
    add_runtime_option(parser)
    add_encoding_options(parser, queries=False)
    add_ray_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from retriever.data.datasets import scan_corpus
    from retriever.encode.encoder import Encoder
    from retriever.store.embeddings import parse_slice
    from retriever.store.encoding import check_store_options, encode_corpus

    slice_ = parse_slice(args.shard)
    ray = ray_options(args)
    poolings = parse_poolings(args.pooling)
    config = encoder_config(argparse.Namespace(**{**vars(args), "pooling": poolings[0]}))
    check_store_options(args.out, args.chunk_size, "--out")  # before the model loads
    scan = scan_corpus(args.dataset, args.limit)
    encoder = Encoder.load(
        args.model,
        config,
        dtype=args.dtype,
        device=args.device,
        batch_size=args.batch_size,
        revision=args.revision,
        unembedding_from=args.unembedding_from,
        runtime=args.runtime,
    )
    store = encode_corpus(
        encoder,
        scan,
        folder=args.out,
        chunk_size=args.chunk_size,
        poolings=poolings,
        precision=args.store_precision,
        slice_=slice_,
        restart=args.restart,
        ray=ray,
    )
    missing = store.missing_chunks()
    state = (
        "complete: assemble it with `retriever index --from " + str(store.folder) + " --out DIR`"
        if not missing
        else f"{store.num_chunks - len(missing)} of {store.num_chunks} chunks present"
    )
    print(f"{store.folder} ({state})")
    return 0
