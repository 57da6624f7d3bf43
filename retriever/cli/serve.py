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
        "/batch_search (a BEIR run), GET /documents/ID, GET /lens?text=..., POST /lenses, "
        "GET /info, /stats and /health, a search page at / and the API docs at /docs. "
        "Concurrent searches are batched into one forward pass. Every answer names the "
        "generation that gave it: when `retriever add`, `delete` or `index --overwrite` "
        "publishes a new one, the server opens it and answers from it, finishing the "
        "requests under way on the old one.\n\n"
        'A mistake is answered with a 4xx and {"error": "..."}, the CLI\'s own message; a '
        "full queue or a request past its deadline with 503 and Retry-After. With "
        "--api-key-file, every path but /health, the page and the docs needs "
        "'Authorization: Bearer KEY' or 'X-API-Key: KEY'. SIGTERM or Ctrl-C stops it: the "
        "work under way gets --shutdown-timeout seconds, then it exits 0.",
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
        help="require the key this file holds (one line of printable ASCII) on every "
        "request but /health, the page and the docs; binding beyond loopback without one "
        "logs a warning",
    )
    parser.add_argument(
        "--allowed-hosts",
        metavar="NAMES",
        default=None,
        help="comma-separated host names a request's Host header may give, or '*' for any "
        "(default: the bound address, localhost and, for 0.0.0.0 or ::, this machine's "
        "names)",
    )
    _add_flags(parser.add_argument_group("limits"), LIMIT_FLAGS)
    _add_flags(parser.add_argument_group("batching and stopping"), BATCHING_FLAGS)
    add_model_options(parser, from_index=True)
    parser.set_defaults(run=run)


# (flag, type, default, least, help): each becomes --flag N with its default shown, and
# is refused below its least value.
LIMIT_FLAGS = (
    ("max-k", int, 1000, 1, "most hits per query"),
    ("max-query-chars", int, 4096, 1, "longest query or lens text, in characters"),
    ("max-batch", int, 256, 1, "most queries in one /batch_search"),
    ("max-explain", int, 20, 1, "most hits with explain=true, and most documents in /lenses"),
    ("max-queue", int, 128, 1, "most requests waiting for the searcher; past it, 503"),
    (
        "request-timeout",
        float,
        30.0,
        1,
        "seconds a request (or a batch's slice) may take; then 503",
    ),
    ("max-connections", int, 256, 1, "most open connections; past it, 503 and close"),
)
BATCHING_FLAGS = (
    ("batch-queries", int, 16, 1, "most queries in one forward pass"),
    ("batch-wait-ms", float, 2.0, 0, "how long a short batch waits for more queries"),
    ("shutdown-timeout", float, 10.0, 0, "seconds the work under way gets at SIGTERM or Ctrl-C"),
)


def _add_flags(group: argparse._ArgumentGroup, flags: tuple) -> None:
    for flag, kind, default, _, text in flags:
        group.add_argument(
            "--" + flag,
            type=kind,
            default=default,
            metavar="N",
            help=f"{text} (default: %(default)s)",
        )


def _check_numbers(args: argparse.Namespace) -> None:
    for flag, _, _, least, _ in LIMIT_FLAGS + BATCHING_FLAGS:
        value = getattr(args, flag.replace("-", "_"))
        if value < least:
            raise RetrieverError(f"--{flag} must be at least {least}, got {value}")
    if not 0 <= args.port <= 65535:
        raise RetrieverError(f"--port must lie in 0..65535, got {args.port}")


def _allowed_hosts(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return ()  # serve's default: the bound address and this machine's names
    names = tuple(name.strip() for name in value.split(",") if name.strip())
    if not names:
        raise RetrieverError("--allowed-hosts is empty: give host names, or '*' for any")
    return None if "*" in names else names


def run(args: argparse.Namespace) -> int:
    try:
        import fastapi  # noqa: F401
        import swagger_ui_bundle  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise RetrieverError(
            "retriever serve needs FastAPI, uvicorn and swagger-ui-bundle-v2: "
            "pip install 'retriever[serve]'"
        ) from None
    _check_numbers(args)
    from retriever.serve.app import read_api_key, serve
    from retriever.serve.schemas import Limits
    from retriever.serve.server import ConnectionLimits

    if args.api_key_file is not None:
        read_api_key(args.api_key_file)  # refused before the model loads
    serve(
        args.index,
        args.host,
        args.port,
        args.api_key_file,
        limits=Limits(
            max_k=args.max_k,
            max_query_chars=args.max_query_chars,
            max_batch=args.max_batch,
            max_explain=args.max_explain,
            max_queued=args.max_queue,
            request_timeout_s=args.request_timeout,
        ),
        connections=ConnectionLimits(max_connections=args.max_connections),
        allowed_hosts=_allowed_hosts(args.allowed_hosts),
        shutdown_timeout_s=args.shutdown_timeout,
        batch_queries=args.batch_queries,
        batch_wait_ms=args.batch_wait_ms,
        searcher_options={
            "model": args.model,
            "dtype": args.dtype,
            "device": args.device,
            "batch_size": args.batch_size,
        },
    )
    return 0
