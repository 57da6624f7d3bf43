"""``retriever index``: encode a collection and build a filtered index."""

from __future__ import annotations

import argparse

from retriever.cli.formatting import add_command
from retriever.cli.options import (
    add_encoding_options,
    add_gpu_options,
    add_model_options,
    add_ray_options,
    add_runtime_option,
    add_search_param_options,
    add_sparse_size_options,
    add_store_options,
    encoder_config,
    gpu_options,
    ray_options,
)
from retriever.core.config import (
    BANDS,
    BINARY_CENTRES,
    DEFAULT_STORAGE,
    DEFAULT_STORAGE_REASON,
    SPACES,
    STORAGES,
    FilterSpec,
    SparseSpec,
)
from retriever.core.errors import RetrieverError


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
    size = group.add_mutually_exclusive_group()
    size.add_argument(
        "--tau",
        type=float,
        default=None,
        help="keep d // tau dimensions; 1 = unfiltered baseline (default: 2)",
    )
    size.add_argument("--dim", type=int, default=None, help="keep exactly this many dimensions")
    group.add_argument(
        "--band",
        choices=BANDS,
        default="edge",
        help="which singular directions to keep: edge = middle band (drops the top and the "
        "bottom equally), tail = top k, head = bottom k, rand = random k "
        "(default: %(default)s)",
    )
    group.add_argument(
        "--start", type=int, default=None, help="explicit first kept direction (overrides --band)"
    )
    group.add_argument("--seed", type=int, default=0, help="seed of --band rand")
    group.add_argument(
        "--remove-mean-direction",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="after the band, also project out the direction of the mean unembedding row "
        "seen through the filter: this project's data-free refinement (how it compares: "
        "benchmarks/results/scifact-smollm2/results.md). --no-remove-mean-direction builds "
        "the paper's exact EmbedFilter (default: on, except at --tau 1, the unfiltered "
        "baseline)",
    )


def _add_dense_options(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--index-type",
        default="Flat",
        metavar="TYPE",
        help="Flat (exact), HNSWm (graph; m links per node, default 32) or IVFn (n lists), "
        "holding --storage codes; or any faiss.index_factory string that names its own "
        "codes, e.g. IVF256,PQ16 (inner product on normalised vectors); with --backend "
        "milvus on a server also a Milvus index name such as HNSW or GPU_CAGRA "
        "(default: %(default)s)",
    )
    group.add_argument(
        "--storage",
        choices=STORAGES,
        default=None,
        help="how each filtered vector is stored: float32, float16 (FAISS fp16), int8 "
        "(FAISS SQ8: per-dimension ranges from up to 100,000 sampled documents) or binary "
        "(1 bit per dimension, Hamming search). Default: "
        f"{DEFAULT_STORAGE}; {DEFAULT_STORAGE_REASON}",
    )
    group.add_argument(
        "--rescore",
        type=int,
        default=None,
        metavar="M",
        help="also keep --rescore-vectors (memory-mapped) and re-score the "
        "M x k best candidates of the compact codes with the float query; stored as the "
        "index's default M (with --storage int8 or binary)",
    )
    group.add_argument(
        "--rescore-vectors",
        choices=("int8", "float32"),
        default="int8",
        help="with --rescore, the vectors kept for the second stage: int8 (1 byte per "
        "dimension) or float32 (4 bytes; exact scores) (default: %(default)s)",
    )
    group.add_argument(
        "--binary-centre",
        choices=BINARY_CENTRES,
        default="documents",
        help="with --storage binary, a bit is x > centre: the mean of the sampled documents, "
        "or zero (the sign; needs no data) (default: %(default)s)",
    )
    group.add_argument(
        "--ef-construction",
        type=int,
        default=None,
        metavar="N",
        help="HNSW candidate list size while building (faiss's own default is 40)",
    )
    add_search_param_options(group, at_build=True)
    add_gpu_options(group)
    group.add_argument(
        "--backend",
        choices=("faiss", "milvus"),
        default="faiss",
        help="where the dense vectors live: faiss (index.faiss in the folder) or milvus "
        "(pip install 'retriever[milvus]'; Lite: Flat or IVFn,Flat) (default: %(default)s)",
    )
    group.add_argument(
        "--milvus-uri",
        default=None,
        metavar="URI",
        help="with --backend milvus: http://HOST:19530 for a Milvus standalone or cluster "
        "(default: a Milvus Lite database inside the index folder)",
    )
    group.add_argument(
        "--collection",
        default="retriever",
        help="with --backend milvus: the collection name. On a server it is an alias of "
        "the current generation's collection NAME__<generation>, switched on every build, "
        "add and delete (default: %(default)s)",
    )
    group.add_argument(
        "--no-dense",
        action="store_true",
        help="write no FAISS index: the folder answers only with --sparse and/or --bm25",
    )


def _add_sparse_options(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--sparse",
        action="store_true",
        help="also store each document as its top-K aligned tokens (weights e_t . x through "
        "the unembedding matrix) in an inverted index (sparse/)",
    )
    add_sparse_size_options(group, query_note="; search can override it")
    group.add_argument(
        "--sparse-space",
        choices=SPACES,
        default="filtered",
        help="align tokens with the filtered vector the index stores (F^T F h) or the raw "
        "embedding h (default: %(default)s)",
    )
    group.add_argument(
        "--bm25",
        action="store_true",
        help="also store a BM25 index of the documents' words (bm25s; English stopwords "
        "and stemmer) for the lexical baseline and dense+bm25 hybrids (bm25/)",
    )


def run(args: argparse.Namespace) -> int:
    from retriever.index.build import SearchParams, build_index

    if args.dataset is not None and args.from_store is not None:
        raise RetrieverError("give either DATASET or --from STORE, not both")
    out = build_index(
        args.dataset,
        args.out,
        model=args.model,
        revision=args.revision,
        encoder_config=encoder_config(args),
        filter_spec=_filter_spec(args),
        index_type=args.index_type,
        limit=args.limit,
        batch_size=args.batch_size,
        dtype=args.dtype,
        device=args.device,
        unembedding_from=args.unembedding_from,
        dense=not args.no_dense,
        sparse=_sparse_spec(args),
        bm25=args.bm25,
        search_params=SearchParams(args.nprobe, args.ef_search, args.rescore),
        storage=args.storage,
        binary_centre=args.binary_centre,
        ef_construction=args.ef_construction,
        rescore_vectors=args.rescore_vectors,
        overwrite=args.overwrite,
        store=args.store,
        from_store=args.from_store,
        chunk_size=args.chunk_size,
        store_precision=args.store_precision,
        runtime=args.runtime,
        restart=args.restart,
        ray=ray_options(args),
        backend=args.backend,
        milvus_uri=args.milvus_uri,
        collection=args.collection,
        use_gpu=gpu_options(args),
    )
    print(out)
    return 0


def _filter_spec(args: argparse.Namespace) -> FilterSpec:
    return FilterSpec(
        tau=args.tau,
        dim=args.dim,
        band=args.band,
        start=args.start,
        seed=args.seed,
        remove_mean_direction=args.remove_mean_direction,
    )


def _sparse_spec(args: argparse.Namespace) -> SparseSpec | None:
    if not args.sparse:
        return None
    return SparseSpec(
        doc_tokens=args.sparse_doc_tokens,
        query_tokens=args.sparse_query_tokens,
        space=args.sparse_space,
    )
