"""The ``retriever`` command: a thin shell over the Python API.

Heavy imports (torch, transformers, faiss) happen inside each subcommand, so ``--help``
answers at once.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import shlex
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from retriever.config import (
    BANDS,
    DISPLAY_SPACE,
    DTYPES,
    FUSIONS,
    METHODS,
    POOLINGS,
    PROMPTS,
    SPACES,
    EncoderConfig,
    SparseSpec,
)
from retriever.errors import RetrieverError

DEFAULT_MODEL = "smollm2-135m"  # kept in step with retriever.models.DEFAULT_MODEL by a test


def _add_model_options(parser: argparse.ArgumentParser, *, for_search: bool) -> None:
    group = parser.add_argument_group("model")
    if for_search:
        group.add_argument(
            "--model",
            default=None,
            help="load this model instead of the one named in the manifest (its weights "
            "must be the same, e.g. a local copy)",
        )
    else:
        group.add_argument(
            "--model",
            default=DEFAULT_MODEL,
            help=f"bundled alias ({DEFAULT_MODEL}), local model folder, or Hugging Face hub "
            "id (default: %(default)s)",
        )
        group.add_argument("--revision", default=None, help="hub revision (branch, tag, commit)")
        group.add_argument(
            "--unembedding-from",
            metavar="MODEL",
            default=None,
            help="take the unembedding matrix from this model (for embedding models "
            "without an LM head: give the LLM they were trained from)",
        )
    if for_search:
        group.add_argument(
            "--dtype",
            choices=DTYPES,
            default=None,
            help="weights dtype (default: the one the index was built with, so queries are "
            "encoded like its documents)",
        )
    else:
        group.add_argument(
            "--dtype",
            choices=DTYPES,
            default="auto",
            help="weights dtype; auto = bfloat16 on a GPU or a CPU with AVX-512 BF16/AMX, "
            "float32 otherwise (default: %(default)s)",
        )
    group.add_argument("--device", default=None, help="torch device (default: cuda if present)")
    group.add_argument(
        "--batch-size", type=int, default=16, help="texts per forward pass (default: %(default)s)"
    )


def _add_encoding_options(parser: argparse.ArgumentParser, *, with_pooling: bool) -> None:
    encoding = parser.add_argument_group("encoding")
    encoding.add_argument(
        "--prompt",
        choices=list(PROMPTS),
        default="prompteol",
        help='prompt template: prompteol = \'This sentence : "{text}" means in one word:"\', '
        "echo = text twice, pooled over the second copy, none = bare text "
        "(default: %(default)s)",
    )
    if with_pooling:
        encoding.add_argument(
            "--pooling",
            choices=POOLINGS,
            default="mean",
            help="mean over the prompted tokens, or the last token (default: %(default)s; "
            "the store keeps both)",
        )
    encoding.add_argument(
        "--max-length",
        type=int,
        default=256,
        help="tokens per input including the prompt; longer texts keep their head and "
        "tail halves (default: %(default)s)",
    )
    if with_pooling:
        encoding.add_argument(
            "--query-instruction", default="", help="text put before every query's prompt"
        )
    encoding.add_argument(
        "--document-instruction", default="", help="text put before every document's prompt"
    )


def _add_store_options(
    parser: argparse.ArgumentParser,
    *,
    with_limit: bool,
    with_store: bool = True,
    with_restart: bool = True,
) -> None:
    group = parser.add_argument_group("embedding store")
    if with_limit:
        group.add_argument(
            "--limit",
            type=int,
            default=None,
            metavar="N",
            help="only the first N documents in file order",
        )
    if with_store:
        group.add_argument(
            "--store",
            metavar="DIR",
            default=None,
            help="keep the raw embeddings in this store folder (default: a folder in "
            "~/.cache/retriever/embeddings/ named by the model, settings and corpus hash, "
            "shared by every command that encodes the same corpus the same way)",
        )
    group.add_argument(
        "--chunk-size",
        type=int,
        default=4096,
        metavar="N",
        help="documents per shard: the unit of resuming and of memory (default: %(default)s)",
    )
    if with_restart:
        group.add_argument(
            "--restart",
            action="store_true",
            help="empty a store that holds another encoding (or a partial one) and encode "
            "afresh, instead of refusing or resuming",
        )


def _add_ray_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Ray (optional: pip install 'retriever[ray]')")
    group.add_argument(
        "--ray",
        nargs="?",
        const="local",
        default=None,
        metavar="ADDRESS",
        help="encode on Ray Data actors instead of this process: no ADDRESS starts a local "
        "Ray with this machine's cores, 'auto' or ray://HOST:PORT joins a cluster (workers "
        "must see the corpus and the store at the same paths)",
    )
    group.add_argument(
        "--ray-workers",
        type=int,
        default=None,
        metavar="N",
        help="model actors (default: one per GPU, or half the CPUs without GPUs)",
    )
    group.add_argument(
        "--ray-gpus-per-worker",
        type=float,
        default=None,
        metavar="G",
        help="GPUs per actor (default: 1 when the cluster has GPUs, else 0)",
    )


def _ray_options(args: argparse.Namespace) -> Any:
    if args.ray is None:
        return None
    from retriever.store import RayOptions

    if args.ray_workers is not None and args.ray_workers < 1:
        raise RetrieverError(f"--ray-workers must be at least 1, got {args.ray_workers}")
    from retriever.distributed import import_ray

    import_ray()  # says how to install Ray before the model loads
    return RayOptions(
        address=None if args.ray == "local" else args.ray,
        workers=args.ray_workers,
        gpus_per_worker=args.ray_gpus_per_worker,
        device=args.device,
    )


def _add_search_param_options(group: argparse._ActionsContainer, *, at_build: bool) -> None:
    when = "stored as the index's default" if at_build else "default: the index's"
    group.add_argument(
        "--nprobe",
        type=int,
        default=None,
        metavar="N",
        help=f"IVF lists searched per query ({when}; faiss's own default is 1)",
    )
    group.add_argument(
        "--ef-search",
        type=int,
        default=None,
        metavar="N",
        help=f"HNSW candidate list size per query ({when}; faiss's own default is 16)",
    )


def _add_gpu_options(group: argparse._ActionsContainer) -> None:
    group.add_argument(
        "--gpu",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="build and search FAISS indexes on the GPU (needs faiss-gpu: pip install "
        "'retriever[gpu]'); --no-gpu keeps the CPU (default: the GPU when faiss sees one, "
        "else the CPU; the log says which, and why)",
    )
    group.add_argument(
        "--gpu-ids",
        default=None,
        metavar="IDS",
        help="GPUs to use, e.g. 0,1 (default: all visible)",
    )
    group.add_argument(
        "--gpu-placement",
        choices=("replicate", "shard"),
        default="replicate",
        help="on several GPUs: replicate (each holds the whole index, for throughput) or "
        "shard (each holds a slice, for an index larger than one GPU) (default: %(default)s)",
    )
    group.add_argument(
        "--gpu-float16",
        action="store_true",
        help="store vectors in float16 on the GPU (half the memory; scores change in the "
        "3rd-4th digit). IVF-PQ always uses float16 lookup tables on the GPU",
    )


def _gpu_options(args: argparse.Namespace) -> Any:
    from retriever.faiss_gpu import GpuOptions, parse_gpu_ids

    return GpuOptions(
        enabled=args.gpu,
        ids=parse_gpu_ids(args.gpu_ids) if args.gpu_ids else None,
        placement=args.gpu_placement,
        float16=args.gpu_float16,
    )


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="retriever",
        description="Dense retrieval with LLM embeddings and an EmbedFilter-reduced FAISS index.",
    )
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="only warnings and errors: no info lines, no progress bars (also accepted after "
        "the command)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    index = commands.add_parser(
        "index",
        help="encode a collection and build a filtered index",
        description="Encode documents with an LLM, project them with EmbedFilter and write a "
        "self-describing index (manifest.json, filter.npy, index.faiss, docstore/). The "
        "build streams: documents are encoded chunk by chunk into an embedding store (raw "
        "embeddings on disk), then assembled shard by shard. Rerunning a killed build "
        "resumes from the last complete chunk. --out becomes a link to an immutable "
        "generation folder, swapped atomically when the build is complete.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=textwrap.dedent(
            """\
            examples:
              retriever index ../shared/datasets/scifact --out indexes/scifact --tau 2
              retriever encode ../shared/datasets/scifact --out store --shard 0/2   # and 1/2
              retriever index --from store --out indexes/scifact --index-type IVF256,Flat
            """
        ),
    )
    index.add_argument(
        "dataset",
        nargs="?",
        help="BEIR dataset folder (with corpus.jsonl) or a JSONL file of "
        '{"_id", "title", "text"} documents (omit with --from)',
    )
    index.add_argument("--out", required=True, help="index path to create (a link)")
    index.add_argument(
        "--overwrite", action="store_true", help="replace an existing index at --out"
    )
    index.add_argument(
        "--from",
        dest="from_store",
        metavar="STORE",
        default=None,
        help="assemble from a complete embedding store written by `retriever encode` "
        "instead of encoding DATASET; the store fixes the model, dtype, prompt, max length "
        "and document instruction",
    )
    _add_store_options(index, with_limit=True)
    _add_model_options(index, for_search=False)
    _add_encoding_options(index, with_pooling=True)
    _add_ray_options(index)

    filtering = index.add_argument_group("EmbedFilter")
    size = filtering.add_mutually_exclusive_group()
    size.add_argument(
        "--tau",
        type=float,
        default=None,
        help="keep d // tau dimensions; 1 = unfiltered baseline (default: 2)",
    )
    size.add_argument("--dim", type=int, default=None, help="keep exactly this many dimensions")
    filtering.add_argument(
        "--band",
        choices=BANDS,
        default="edge",
        help="which singular directions to keep: edge = middle band (drops the top and the "
        "bottom equally), tail = top k, head = bottom k, rand = random k "
        "(default: %(default)s)",
    )
    filtering.add_argument(
        "--start", type=int, default=None, help="explicit first kept direction (overrides --band)"
    )
    filtering.add_argument("--seed", type=int, default=0, help="seed of --band rand")
    filtering.add_argument(
        "--remove-mean-direction",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="after the band, also project out the direction of the mean unembedding row "
        "seen through the filter: this project's data-free refinement, the best data-free "
        "variant measured on SciFact (nDCG@10 0.310 vs 0.251, mean pooling, tau 2). "
        "--no-remove-mean-direction builds the paper's exact EmbedFilter (default: on, "
        "except at --tau 1, the unfiltered baseline)",
    )

    faiss_group = index.add_argument_group("dense index (FAISS or Milvus)")
    faiss_group.add_argument(
        "--index-type",
        default="Flat",
        help="faiss.index_factory string, e.g. Flat, HNSW32, IVF256,Flat, IVF256,PQ16 "
        "(inner product on normalised vectors); with --backend milvus on a server also a "
        "Milvus index name such as HNSW or GPU_CAGRA (default: %(default)s)",
    )
    _add_search_param_options(faiss_group, at_build=True)
    _add_gpu_options(faiss_group)
    faiss_group.add_argument(
        "--backend",
        choices=("faiss", "milvus"),
        default="faiss",
        help="where the dense vectors live: faiss (index.faiss in the folder) or milvus "
        "(pip install 'retriever[milvus]'; Lite: Flat or IVFn,Flat) (default: %(default)s)",
    )
    faiss_group.add_argument(
        "--milvus-uri",
        default=None,
        metavar="URI",
        help="with --backend milvus: http://HOST:19530 for a Milvus standalone or cluster "
        "(default: a Milvus Lite database inside the index folder)",
    )
    faiss_group.add_argument(
        "--collection",
        default="retriever",
        help="with --backend milvus: the collection name. On a server it is an alias of "
        "the current generation's collection NAME__<generation>, switched on every build, "
        "add and delete (default: %(default)s)",
    )
    faiss_group.add_argument(
        "--no-dense",
        action="store_true",
        help="write no FAISS index: the folder answers only with --sparse and/or --bm25",
    )

    sparse_group = index.add_argument_group("key-token sparse index and BM25")
    sparse_group.add_argument(
        "--sparse",
        action="store_true",
        help="also store each document as its top-K aligned tokens (weights e_t . x through "
        "the unembedding matrix) in an inverted index (sparse/)",
    )
    _add_sparse_size_options(sparse_group, query_note="; search can override it")
    sparse_group.add_argument(
        "--sparse-space",
        choices=SPACES,
        default="filtered",
        help="align tokens with the filtered vector the index stores (F^T F h) or the raw "
        "embedding h (default: %(default)s)",
    )
    sparse_group.add_argument(
        "--bm25",
        action="store_true",
        help="also store a BM25 index of the documents' words (bm25s; English stopwords "
        "and stemmer) for the lexical baseline and dense+bm25 hybrids (bm25/)",
    )

    encode = commands.add_parser(
        "encode",
        help="encode a collection (or one slice of it) into an embedding store",
        description="Encode documents into an embedding store: raw pooled embeddings "
        "(every pooling) in one shard per chunk of --chunk-size documents, with the "
        "documents beside them. --shard I/N encodes only the chunks c with c %% N == I, so "
        "N processes or machines can share a corpus; `retriever index --from STORE` "
        "assembles the index once every chunk is present. A rerun skips complete chunks.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=textwrap.dedent(
            """\
            example (three processes, then one assembly):
              for i in 0 1 2; do retriever encode corpus.jsonl --out store --shard $i/3 & done
              wait; retriever index --from store --out indexes/corpus
            """
        ),
    )
    encode.add_argument("dataset", help="BEIR dataset folder or JSONL file of documents")
    encode.add_argument("--out", required=True, metavar="STORE", help="embedding store folder")
    encode.add_argument(
        "--shard",
        default="0/1",
        metavar="I/N",
        help="encode slice I of N (chunks c with c %% N == I; default: %(default)s, all)",
    )
    _add_store_options(encode, with_limit=True, with_store=False)
    _add_model_options(encode, for_search=False)
    _add_encoding_options(encode, with_pooling=False)
    _add_ray_options(encode)

    add = commands.add_parser(
        "add",
        help="add documents to an index (new ids, or replace with --upsert)",
        description="Encode a corpus with the index's own model and settings and append it "
        "to every part of the index (dense, sparse, BM25, docstore) in a new generation, "
        "swapped in atomically. Ids already in the index are refused unless --upsert "
        "replaces them. BM25 is rebuilt over the whole collection (its statistics change).",
    )
    add.add_argument("index", help="index path built by `retriever index`")
    add.add_argument("dataset", help="BEIR dataset folder or JSONL file of documents to add")
    add.add_argument(
        "--upsert", action="store_true", help="replace documents whose id is already indexed"
    )
    _add_store_options(add, with_limit=True, with_restart=False)
    _add_model_options(add, for_search=True)

    delete = commands.add_parser(
        "delete",
        help="remove documents from an index by id",
        description="Remove documents from every part of an index in a new generation, "
        "swapped in atomically; no model is loaded. An id the index does not hold is an "
        "error and nothing is deleted.",
    )
    delete.add_argument("index", help="index path built by `retriever index`")
    delete.add_argument("ids", nargs="*", metavar="ID", help="document ids to remove")
    delete.add_argument("--ids-file", metavar="FILE", help="a file of document ids, one per line")

    search = commands.add_parser(
        "search",
        help="search an index folder",
        description="Encode a query with the index's model, prompt and filter, and print "
        "the best documents.",
    )
    search.add_argument("index", help="index folder built by `retriever index`")
    search.add_argument("query", help="the query text")
    search.add_argument("-k", type=int, default=10, help="number of hits (default: %(default)s)")
    search.add_argument("--json", action="store_true", help="print hits as JSON")
    _add_method_options(search)
    search_faiss = search.add_argument_group("FAISS")
    _add_search_param_options(search_faiss, at_build=False)
    _add_gpu_options(search_faiss)
    search.add_argument(
        "--sparse-query-tokens",
        type=int,
        default=None,
        metavar="M",
        help="aligned tokens added to the query for the sparse index (default: the index's)",
    )
    search.add_argument(
        "--explain",
        action="store_true",
        help="under each hit, the words it shares with the query among both their top "
        "aligned words (whole words; stopwords and punctuation are left out of the display, "
        "not the math). Read in --explain-space",
    )
    search.add_argument(
        "--explain-space",
        choices=SPACES,
        default=DISPLAY_SPACE,
        help="the lens space --explain reads: raw W h or filtered W F^T F h. The default is "
        "the one whose displayed top 10 holds a word of the text more often, measured on "
        "500 SciFact documents with the default model and filter: 0.998 raw against 0.590 "
        "filtered (benchmarks/results/lens-display) (default: %(default)s)",
    )
    search.add_argument(
        "--explain-top",
        type=int,
        default=50,
        metavar="N",
        help="how many top aligned tokens of each side --explain compares (default: %(default)s)",
    )
    _add_model_options(search, for_search=True)

    lens = commands.add_parser(
        "lens",
        help="show the tokens an embedding aligns with, raw and filtered",
        description="Token lens: rank the vocabulary by W h (the raw embedding) and by "
        "W F^T F h (the filtered vector the index stores, mapped back to model space) and "
        "print the top words side by side: whole-word tokens, with stopwords and "
        "punctuation left out of the display (--all-tokens shows the plain ranking). With "
        "--texts, measure instead how well the top aligned tokens match the words of each "
        "text (Hit@10, content Hit@10, local and global alignment rate, share of "
        "stopwords/punctuation in the top 10, and displayed Hit@10: content Hit@10 of "
        "exactly the words shown), raw vs filtered.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=textwrap.dedent(
            """\
            examples:
              retriever lens indexes/scifact "vitamin D and bone density"
              retriever lens indexes/scifact --texts ../shared/datasets/scifact --limit 500
            """
        ),
    )
    lens.add_argument("index", help="index folder built by `retriever index`")
    lens.add_argument("text", nargs="?", help="a text, encoded as a query")
    lens.add_argument(
        "--texts",
        metavar="PATH",
        help="instead of one text: alignment metrics over a BEIR folder, a corpus JSONL "
        "file, or a .txt file with one text per line (encoded as documents)",
    )
    lens.add_argument(
        "--limit", type=int, default=None, metavar="N", help="with --texts, the first N texts"
    )
    lens.add_argument("--top", type=int, default=20, help="tokens shown (default: %(default)s)")
    lens.add_argument(
        "--all-tokens",
        action="store_true",
        help="show the plain ranking, sub-words, stopwords and punctuation included",
    )
    lens.add_argument("--json", action="store_true", help="print JSON")
    _add_model_options(lens, for_search=True)

    evaluate = commands.add_parser(
        "eval",
        help="evaluate an index on a BEIR dataset's queries and judgements",
        description="Search every judged query of a split with every method the index "
        "answers (dense, key-token sparse, BM25, hybrids) and report nDCG@10 (headline), "
        "nDCG@100, Recall@100 and MAP@100 (pytrec_eval), per-query latency split into "
        "query encoding and search (median, p95), batched QPS, and the bytes each method "
        "reads.",
    )
    evaluate.add_argument("index", help="index folder built by `retriever index`")
    evaluate.add_argument(
        "dataset", help="BEIR dataset folder with queries.jsonl and qrels/SPLIT.tsv"
    )
    evaluate.add_argument("--split", default="test", help="qrels split (default: %(default)s)")
    evaluate.add_argument(
        "-k", type=int, default=100, help="hits per query in the run (default: %(default)s)"
    )
    evaluate.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    evaluate.add_argument(
        "--runs", metavar="DIR", help="write one gzipped TREC run per method into DIR"
    )
    evaluate.add_argument(
        "--methods",
        default=None,
        help=f"comma list among {', '.join(METHODS)} (default: every method the index answers)",
    )
    _add_fusion_list_option(evaluate)
    evaluate.add_argument(
        "--dense-weight",
        type=float,
        default=0.5,
        help="dense share of a weighted fusion (default: %(default)s)",
    )
    eval_faiss = evaluate.add_argument_group("FAISS")
    _add_search_param_options(eval_faiss, at_build=False)
    _add_gpu_options(eval_faiss)
    _add_model_options(evaluate, for_search=True)

    bench = commands.add_parser(
        "bench",
        help="benchmark EmbedFilter against the unfiltered index and fitted baselines",
        description="Encode the corpus and queries once per prompt (cached on disk), then "
        "build, search and score every variant side by side: the unfiltered index, "
        "EmbedFilter for every band and tau, the mean-direction refinement, and the PCA, "
        "whitening, all-but-the-top and random-projection baselines. Writes results.json, "
        "results.md, plot.png and gzipped TREC runs to --out.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=textwrap.dedent(
            """\
            example:
              retriever bench ../shared/datasets/scifact --pooling mean,last \\
                  --out benchmarks/results/scifact-smollm2
            """
        ),
    )
    bench.add_argument("dataset", help="BEIR dataset folder (corpus, queries, qrels/)")
    bench.add_argument(
        "--out",
        default=None,
        help="results folder (default: benchmarks/results/<dataset>-<model>)",
    )
    bench.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="bundled alias, local model folder, or hub id (default: %(default)s)",
    )
    bench.add_argument(
        "--prompt",
        default="prompteol",
        help=f"comma list of prompt styles among {', '.join(PROMPTS)} (default: %(default)s)",
    )
    bench.add_argument(
        "--pooling",
        default="mean",
        help="comma list of poolings (mean,last share one forward pass; default: %(default)s)",
    )
    bench.add_argument(
        "--max-length", type=int, default=256, help="tokens per input (default: %(default)s)"
    )
    bench.add_argument(
        "--taus", default="1,2,4,8", help="comma list of tau values (default: %(default)s)"
    )
    bench.add_argument(
        "--bands",
        default="edge,head,tail",
        help="comma list of EmbedFilter bands (default: %(default)s)",
    )
    bench.add_argument(
        "--baselines",
        default="pca,whiten,abtt,random",
        help="comma list of fitted baselines, or 'none' (default: %(default)s)",
    )
    bench.add_argument(
        "--no-mean-direction",
        action="store_true",
        help="skip the rows of the mean-direction refinement (embedfilter-nomean)",
    )
    bench.add_argument(
        "--index-types",
        nargs="+",
        default=["Flat"],
        metavar="TYPE",
        help="faiss.index_factory strings, space separated (default: Flat)",
    )
    _add_gpu_options(bench.add_argument_group("FAISS on GPUs"))
    lexical = bench.add_argument_group("sparse, BM25, hybrids and token alignment")
    lexical.add_argument(
        "--no-sparse",
        action="store_true",
        help="skip the key-token sparse rows (built from the unfiltered, edge and nomean "
        "vectors) and the dense+keytokens hybrids",
    )
    lexical.add_argument(
        "--no-bm25", action="store_true", help="skip the BM25 row and the dense+bm25 hybrids"
    )
    _add_sparse_size_options(lexical)
    lexical.add_argument(
        "--hybrid-tau",
        type=float,
        default=2,
        help="tau of the dense index the hybrids fuse: the best dense variant measured "
        "(edge, mean direction removed; plain edge with --no-mean-direction) "
        "(default: %(default)s)",
    )
    _add_fusion_list_option(lexical)
    lexical.add_argument(
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
    lexical.add_argument(
        "--no-alignment",
        action="store_true",
        help="skip the token-alignment metrics of the documents (raw vs each filter)",
    )
    bench.add_argument("--split", default="test", help="qrels split (default: %(default)s)")
    bench.add_argument(
        "--limit", type=int, default=None, metavar="N", help="only the first N documents"
    )
    bench.add_argument(
        "-k", type=int, default=100, help="hits per query in the runs (default: %(default)s)"
    )
    bench.add_argument(
        "--dtype",
        choices=DTYPES,
        default="auto",
        help="weights dtype, as for `retriever index` (default: %(default)s)",
    )
    bench.add_argument("--device", default=None, help="torch device (default: cuda if present)")
    bench.add_argument(
        "--batch-size", type=int, default=16, help="texts per forward pass (default: %(default)s)"
    )
    scaling = bench.add_argument_group("scaling mode")
    scaling.add_argument(
        "--scaling",
        action="store_true",
        help="instead of the variant table, measure search latency, QPS and bytes against "
        "collection size: the (first prompt/pooling) SciFact vectors tiled to each --sizes "
        "with small noise, Flat and IVF-PQ, one line per EmbedFilter dimension (--taus)",
    )
    scaling.add_argument(
        "--sizes",
        default="10000,100000,1000000",
        help="comma list of collection sizes for --scaling (default: %(default)s)",
    )
    for command in commands.choices.values():
        # Also after the subcommand (`retriever search ... -q`); SUPPRESS keeps a -q given
        # before it.
        command.add_argument(
            "-q",
            "--quiet",
            action="store_true",
            default=argparse.SUPPRESS,
            help="only warnings and errors: no info lines, no progress bars",
        )
    return parser


def _add_sparse_size_options(group: argparse._ActionsContainer, *, query_note: str = "") -> None:
    defaults = SparseSpec()
    group.add_argument(
        "--sparse-doc-tokens",
        type=int,
        default=defaults.doc_tokens,
        metavar="K",
        help="aligned tokens kept per document (default: %(default)s)",
    )
    group.add_argument(
        "--sparse-query-tokens",
        type=int,
        default=defaults.query_tokens,
        metavar="M",
        help=f"aligned tokens added to a query's own tokens{query_note} (default: %(default)s)",
    )


def _add_fusion_list_option(group: argparse._ActionsContainer) -> None:
    group.add_argument(
        "--fusion",
        default=",".join(FUSIONS),
        help="comma list of fusions for the hybrid methods (default: %(default)s)",
    )


def _add_method_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("method")
    group.add_argument(
        "--method",
        choices=METHODS,
        default=None,
        help="dense (FAISS), sparse (key tokens), bm25, or a hybrid fusing dense with one of "
        "them (default: dense, or what the index holds)",
    )
    group.add_argument(
        "--fusion",
        choices=FUSIONS,
        default="rrf",
        help="hybrid fusion: rrf = reciprocal rank (k=60), weighted = weighted sum of "
        "min-max normalised scores (default: %(default)s)",
    )
    group.add_argument(
        "--dense-weight",
        type=float,
        default=0.5,
        help="dense share of a weighted fusion, in [0, 1] (default: %(default)s)",
    )


def _comma_list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def _encoder_config(args: argparse.Namespace) -> EncoderConfig:
    return EncoderConfig(
        prompt=args.prompt,
        pooling=getattr(args, "pooling", "mean"),
        max_length=args.max_length,
        query_instruction=getattr(args, "query_instruction", ""),
        document_instruction=args.document_instruction,
    )


def _run_index(args: argparse.Namespace) -> int:
    from retriever.config import FilterSpec
    from retriever.indexing import SearchParams, build_index

    if args.dataset is not None and args.from_store is not None:
        raise RetrieverError("give either DATASET or --from STORE, not both")
    sparse = (
        SparseSpec(
            doc_tokens=args.sparse_doc_tokens,
            query_tokens=args.sparse_query_tokens,
            space=args.sparse_space,
        )
        if args.sparse
        else None
    )
    out = build_index(
        args.dataset,
        args.out,
        model=args.model,
        revision=args.revision,
        encoder_config=_encoder_config(args),
        filter_spec=FilterSpec(
            tau=args.tau,
            dim=args.dim,
            band=args.band,
            start=args.start,
            seed=args.seed,
            remove_mean_direction=args.remove_mean_direction,
        ),
        index_type=args.index_type,
        limit=args.limit,
        batch_size=args.batch_size,
        dtype=args.dtype,
        device=args.device,
        unembedding_from=args.unembedding_from,
        dense=not args.no_dense,
        sparse=sparse,
        bm25=args.bm25,
        search_params=SearchParams(args.nprobe, args.ef_search),
        overwrite=args.overwrite,
        store=args.store,
        from_store=args.from_store,
        chunk_size=args.chunk_size,
        restart=args.restart,
        ray=_ray_options(args),
        backend=args.backend,
        milvus_uri=args.milvus_uri,
        collection=args.collection,
        use_gpu=_gpu_options(args),
    )
    print(out)
    return 0


def _run_encode(args: argparse.Namespace) -> int:
    from retriever.datasets import scan_corpus
    from retriever.encoder import Encoder
    from retriever.store import encode_corpus, parse_slice

    slice_ = parse_slice(args.shard)
    ray = _ray_options(args)
    config = _encoder_config(args)
    if args.chunk_size < 1:
        raise RetrieverError(f"--chunk-size must be at least 1, got {args.chunk_size}")
    scan = scan_corpus(args.dataset, args.limit)
    encoder = Encoder.load(
        args.model,
        config,
        dtype=args.dtype,
        device=args.device,
        batch_size=args.batch_size,
        revision=args.revision,
        unembedding_from=args.unembedding_from,
    )
    store = encode_corpus(
        encoder,
        scan,
        folder=args.out,
        chunk_size=args.chunk_size,
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


def _run_add(args: argparse.Namespace) -> int:
    from retriever.generations import current_generation
    from retriever.indexing import Indexer
    from retriever.manifest import load_encoder_for, read_manifest

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
    )
    print(f"{out}: {result['added']} added, {result['replaced']} replaced")
    return 0


def _run_delete(args: argparse.Namespace) -> int:
    from retriever.indexing import delete_documents

    ids = list(args.ids)
    if args.ids_file:
        try:
            text = Path(args.ids_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise RetrieverError(f"cannot read --ids-file {args.ids_file}: {exc}") from None
        ids += [line.strip() for line in text.splitlines() if line.strip()]
    removed = delete_documents(args.index, ids)
    print(f"{args.index}: {removed} deleted")
    return 0


def _load_searcher(args: argparse.Namespace) -> Any:
    from retriever.searcher import Searcher

    return Searcher.load(
        args.index,
        model=args.model,
        dtype=args.dtype,
        device=args.device,
        batch_size=args.batch_size,
        nprobe=getattr(args, "nprobe", None),
        ef_search=getattr(args, "ef_search", None),
        use_gpu=_gpu_options(args) if hasattr(args, "gpu") else None,
    )


def _token_list(tokens: Sequence[Any]) -> str:
    return " ".join(repr(token.token) for token in tokens) or "(none)"


def _run_search(args: argparse.Namespace) -> int:
    from retriever.searcher import check_queries

    check_queries([args.query])
    if args.k < 1:
        raise RetrieverError(f"-k must be at least 1, got {args.k}")
    if args.explain_top < 1:
        raise RetrieverError(f"--explain-top must be at least 1, got {args.explain_top}")
    searcher = _load_searcher(args)
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
        records = [hit.to_dict() for hit in hits]
        for record, tokens in zip(records, shared or [], strict=False):
            record["shared_tokens"] = [token.to_dict() for token in tokens]
        print(json.dumps(records, ensure_ascii=False, indent=2))
        return 0
    # Reciprocal-rank scores are sums of 1/(60 + rank): they differ in the 5th decimal.
    digits = 6 if "+" in (args.method or "") and args.fusion == "rrf" else 4
    for rank, hit in enumerate(hits, start=1):
        snippet = " ".join(hit.text.split())
        print(f"{rank:>3}. {hit.score:.{digits}f}  {hit.id}  {hit.title}")
        if snippet:
            print(f"     {snippet[:160]}{'...' if len(snippet) > 160 else ''}")
        if shared is not None:
            print(f"     shared tokens: {_token_list(shared[rank - 1])}")
    return 0


def _run_lens(args: argparse.Namespace) -> int:
    if (args.text is None) == (args.texts is None):
        raise RetrieverError("give either one TEXT or --texts PATH")
    if args.top < 1:
        raise RetrieverError(f"--top must be at least 1, got {args.top}")
    if args.text is not None:
        if not args.text.strip():
            raise RetrieverError("empty text: give some text to look at")
        explanation = _load_searcher(args).explain(
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

    from retriever.datasets import load_texts
    from retriever.lens import alignment_metrics

    texts = load_texts(args.texts, limit=args.limit)
    searcher = _load_searcher(args)
    embeddings = searcher.encoder.encode_documents(texts)
    token_ids = searcher.encoder.text_token_ids(texts)
    report = {
        space: alignment_metrics(searcher.lens, embeddings, token_ids, space) for space in SPACES
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    metrics = list(report["raw"])
    print(f"{'metric':<24} {'raw':>8} {'filtered':>9}")
    for metric in metrics:
        raw, filtered = report["raw"][metric], report["filtered"][metric]
        if isinstance(raw, int):
            print(f"{metric:<24} {raw:>8} {filtered:>9}")
        else:
            print(f"{metric:<24} {raw:>8.4f} {filtered:>9.4f}")
    return 0


def _run_eval(args: argparse.Namespace) -> int:
    from retriever.datasets import load_qrels, load_queries
    from retriever.evaluation import evaluate_index, index_sizes, write_trec_run

    if args.k < 1:
        raise RetrieverError(f"-k must be at least 1, got {args.k}")
    queries = load_queries(args.dataset)
    qrels = load_qrels(args.dataset, args.split)
    fusions = _comma_list(args.fusion)
    unknown = set(fusions) - set(FUSIONS)
    if unknown or not fusions:
        raise RetrieverError(f"--fusion takes a comma list among {', '.join(FUSIONS)}")
    searcher = _load_searcher(args)
    methods = _comma_list(args.methods) if args.methods else None
    rows, runs = evaluate_index(
        searcher,
        queries,
        qrels,
        k=args.k,
        methods=methods,
        fusions=fusions,
        dense_weight=args.dense_weight,
    )
    if args.runs:
        for name, run in runs.items():
            tag = name.replace("/", "-").replace("+", "-")
            write_trec_run(run, Path(args.runs) / f"{tag}.trec.gz", tag=tag)
    report = {
        "index": str(searcher.folder),
        "dataset": args.dataset,
        "split": args.split,
        "bytes": index_sizes(searcher.folder),
        "rows": rows,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
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
    print(f"{rows[0]['queries']} judged queries ({args.split}); latencies are medians per query")
    return 0


def _run_bench(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from retriever.bench import BenchSettings, run_bench

    try:
        taus = tuple(float(t) for t in _comma_list(args.taus))
    except ValueError:
        raise RetrieverError(
            f"--taus must be numbers separated by commas, got {args.taus!r}"
        ) from None
    baselines = () if args.baselines == "none" else tuple(_comma_list(args.baselines))
    settings = BenchSettings(
        taus=taus,
        bands=tuple(_comma_list(args.bands)),
        baselines=baselines,
        index_types=tuple(args.index_types),
        mean_direction=not args.no_mean_direction,
        sparse=not args.no_sparse,
        sparse_spec=SparseSpec(args.sparse_doc_tokens, args.sparse_query_tokens),
        bm25=not args.no_bm25,
        hybrid_tau=args.hybrid_tau,
        cv_folds=args.cv_folds,
        fusions=tuple(_comma_list(args.fusion)),
        alignment=not args.no_alignment,
        k=args.k,
        gpu=_gpu_options(args),
    )
    prompts, poolings = _comma_list(args.prompt), _comma_list(args.pooling)
    for prompt, pooling in ((p, q) for p in prompts for q in poolings):
        EncoderConfig(prompt=prompt, pooling=pooling, max_length=args.max_length)
    out = args.out or (
        f"benchmarks/results/{Path(args.dataset).name}-{Path(args.model).name}"
        + ("-scaling" if args.scaling else "")
    )
    command = "retriever " + shlex.join(argv)
    if args.scaling:
        from retriever.bench import run_scaling_bench

        try:
            sizes = tuple(int(n) for n in _comma_list(args.sizes))
        except ValueError:
            raise RetrieverError(f"--sizes must be integers, got {args.sizes!r}") from None
        run_scaling_bench(
            args.dataset,
            out,
            model=args.model,
            prompt=prompts[0],
            pooling=poolings[0],
            max_length=args.max_length,
            dtype=args.dtype,
            device=args.device,
            batch_size=args.batch_size,
            split=args.split,
            sizes=sizes,
            taus=taus,
            gpu=settings.gpu,
            command=command,
        )
        print(Path(out) / "scaling.md")
        return 0
    run_bench(
        args.dataset,
        out,
        model=args.model,
        prompts=prompts,
        poolings=poolings,
        max_length=args.max_length,
        dtype=args.dtype,
        device=args.device,
        batch_size=args.batch_size,
        split=args.split,
        limit=args.limit,
        settings=settings,
        command=command,
    )
    print(Path(out) / "results.md")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _build_parser().parse_args(argv)
    level = logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="[retriever] %(message)s")
    # Also set here: basicConfig does nothing when logging is already configured (a host
    # program, a test run), and progress bars follow this logger's level.
    logging.getLogger("retriever").setLevel(level)
    # Third-party chatter (faiss's loader, transformers' load reports, BEIR's metric
    # printout in the bench cross-check) would drown the few lines that matter.
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    logging.getLogger("beir").setLevel(logging.WARNING)
    for chatty in ("milvus_lite", "pymilvus", "ray", "bm25s"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    # Milvus Lite's in-process server lacks AllocTimestamp; pymilvus asks, is refused and
    # carries on, but the server side logs the refusal as an error with a traceback.
    logging.getLogger("grpc._server").setLevel(logging.CRITICAL)
    # Copying a collection (add, delete on a server) asks for a timestamp that Milvus Lite's
    # server does not give; pymilvus warns and uses its own, which is right for a copy.
    logging.getLogger("pymilvus.client.iterator.query_iterator").setLevel(logging.ERROR)
    try:
        if args.command == "bench":
            return _run_bench(args, argv)
        commands = {
            "index": _run_index,
            "encode": _run_encode,
            "add": _run_add,
            "delete": _run_delete,
            "search": _run_search,
            "lens": _run_lens,
            "eval": _run_eval,
        }
        return commands[args.command](args)
    except RetrieverError as exc:
        print(f"retriever: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("retriever: interrupted; nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
