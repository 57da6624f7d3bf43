"""``retriever serve``: answer searches of one index over HTTP (FastAPI + uvicorn)."""

from __future__ import annotations

import argparse

from retriever.cli.formatting import add_command
from retriever.cli.options import add_model_options
from retriever.core.errors import RetrieverError


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = add_command(
        commands,
        "serve",
        summary="answer searches of an index over HTTP (needs 'retriever[serve]')",
        description="Serve an index folder over HTTP as JSON: GET/POST /search, POST "
        "/batch_search (a BEIR run), GET /documents/ID, GET /lens?text=..., GET /info and "
        "GET /health. Every answer names the generation that gave it: when `retriever add`, "
        "`delete` or `index --overwrite` publishes a new one, the server opens it and "
        "answers from it, finishing the requests under way on the old one.\n\n"
        'A mistake is answered with a 4xx and {"error": "..."}, the CLI\'s own message. '
        "With --api-key-file, every path but /health needs 'Authorization: Bearer KEY' or "
        "'X-API-Key: KEY'.",
        examples="""\
            examples:
              retriever serve indexes/scifact
              retriever serve indexes/scifact --host 0.0.0.0 --port 9000 --api-key-file key.txt
              curl 'http://127.0.0.1:8080/search?query=vitamin+D&k=5'
            """,
    )
    parser.add_argument("index", help="index folder built by `retriever index`")
    parser.add_argument("--host", default="127.0.0.1", help="address (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8080, help="port (default: %(default)s)")
    parser.add_argument(
        "--api-key-file",
        metavar="FILE",
        default=None,
        help="require the key this file holds (one line) on every request but /health",
    )
    _add_limit_options(parser.add_argument_group("limits"))
    add_model_options(parser, from_index=True)
    parser.set_defaults(run=run)


def _add_limit_options(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--max-k",
        type=int,
        default=1000,
        metavar="N",
        help="most hits per query (default: %(default)s)",
    )
    group.add_argument(
        "--max-query-chars",
        type=int,
        default=4096,
        metavar="N",
        help="longest query or lens text, in characters (default: %(default)s)",
    )
    group.add_argument(
        "--max-batch",
        type=int,
        default=256,
        metavar="N",
        help="most queries in one /batch_search (default: %(default)s)",
    )


def run(args: argparse.Namespace) -> int:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise RetrieverError(
            "retriever serve needs FastAPI and uvicorn: pip install 'retriever[serve]'"
        ) from None
    for flag in ("max_k", "max_query_chars", "max_batch"):
        if getattr(args, flag) < 1:
            name = "--" + flag.replace("_", "-")
            raise RetrieverError(f"{name} must be at least 1, got {getattr(args, flag)}")
    if not 0 <= args.port <= 65535:
        raise RetrieverError(f"--port must lie in 0..65535, got {args.port}")
    from retriever.serve.app import read_api_key, serve
    from retriever.serve.schemas import Limits

    if args.api_key_file is not None:
        read_api_key(args.api_key_file)  # refused before the model loads
    serve(
        args.index,
        args.host,
        args.port,
        args.api_key_file,
        limits=Limits(
            max_k=args.max_k, max_query_chars=args.max_query_chars, max_batch=args.max_batch
        ),
        searcher_options={
            "model": args.model,
            "dtype": args.dtype,
            "device": args.device,
            "batch_size": args.batch_size,
        },
    )
    return 0
