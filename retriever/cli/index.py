"""``retriever index``: encode a collection and build a filtered index."""

from __future__ import annotations

import argparse

from retriever.cli.formatting import add_command
from retriever.cli.options import (
    add_encoding_options,
    add_gpu_options,
    add_model_options,
    add_part_flags,
    add_ray_options,
    add_runtime_option,
    add_search_param_options,
    add_spec_options,
    add_store_options,
    gpu_options,
    index_spec,
    ray_options,
)
from retriever.core.errors import RetrieverError
from retriever.core.spec import DenseSpec, FilterSpec, SparseSpec


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = add_command(
        commands,
        "index",
        summary="encode a collection and build a filtered index",
        description="Encode documents with an LLM, project them with EmbedFilter and write a "
        "self-describing index (manifest.json, filter.npy, index.faiss, docstore/).\n\n"
        "The build streams: documents are encoded chunk by chunk into an embedding store "
        "(raw embeddings on disk), then assembled shard by shard. Rerunning a killed build "
        "resumes from the last complete chunk. --out becomes a link to an immutable "
        "generation folder, swapped atomically when the build is complete.",
        examples="""\
            examples:
              retriever index beir:scifact --out indexes/scifact --tau 2
              retriever encode beir:scifact --out store --shard 0/2   # and 1/2
              retriever index --from store --out indexes/scifact --index-type IVF256,Flat
            """,
    )
    parser.add_argument(
        "dataset",
        nargs="?",
        help="BEIR dataset folder (with corpus.jsonl), beir:NAME (downloaded into the cache on "
        "first use; `retriever datasets`) or a JSONL file of "
        '{"_id", "title", "text"} documents (omit with --from)',
    )
    parser.add_argument(
        "--out", required=True, metavar="INDEX", help="index path to create (a link)"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing index at --out"
    )
    parser.add_argument(
        "--from",
        dest="from_store",
        metavar="STORE",
        default=None,
        help="assemble from a complete embedding store written by `retriever encode` "
        "instead of encoding DATASET; the store fixes the model, dtype, prompt, max length "
        "and document instruction",
    )
    add_store_options(parser, with_limit=True)
    add_model_options(parser, from_index=False)
    add_runtime_option(parser)
    add_encoding_options(parser, queries=True)
    add_ray_options(parser)
    _add_filter_options(parser.add_argument_group("EmbedFilter"))
    _add_dense_options(parser.add_argument_group("dense index (FAISS or Milvus)"))
    _add_sparse_options(parser.add_argument_group("key-token sparse index and BM25"))
    parser.set_defaults(run=run)


def _add_filter_options(group: argparse._ArgumentGroup) -> None:
    add_spec_options(group, FilterSpec)


def _add_dense_options(group: argparse._ArgumentGroup) -> None:
    add_spec_options(group, DenseSpec)
    add_search_param_options(group, at_build=True)
    add_gpu_options(group)
    add_part_flags(group, "dense")


def _add_sparse_options(group: argparse._ArgumentGroup) -> None:
    add_part_flags(group, "sparse")
    add_spec_options(group, SparseSpec)
    add_part_flags(group, "bm25")


def run(args: argparse.Namespace) -> int:
    from retriever.index.build import BuildOptions, build_index

    if args.dataset is not None and args.from_store is not None:
        raise RetrieverError("give either DATASET or --from STORE, not both")
    options = BuildOptions(
        limit=args.limit,
        batch_size=args.batch_size,
        device=args.device,
        runtime=args.runtime,
        use_gpu=gpu_options(args),
        store=args.store,
        from_store=args.from_store,
        chunk_size=args.chunk_size,
        store_precision=args.store_precision,
        restart=args.restart,
        ray=ray_options(args),
        overwrite=args.overwrite,
    )
    print(build_index(args.dataset, args.out, index_spec(args), options))
    return 0
