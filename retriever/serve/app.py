"""The HTTP API: one index, searched over HTTP by ``retriever serve`` (FastAPI + uvicorn).

Every answer names the generation that gave it: the server follows the index path to
each new generation a writer publishes (:mod:`retriever.serve.follow`). A user's mistake is a
4xx JSON ``{"error": "<one line>"}``, the CLI's own message; never a traceback.

One worker thread runs every search, batching concurrent queries into one forward pass
(:mod:`retriever.serve.batching`); the endpoints wait on it without holding a thread. What a
request must pass first (host, key, body size) is :mod:`retriever.serve.guard`; the
listening socket, connection limits and the stop are :mod:`retriever.serve.server`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from retriever.core.errors import RetrieverError
from retriever.serve.batching import Batcher
from retriever.serve.follow import FollowingSearcher
from retriever.serve.guard import Guard, default_allowed_hosts, is_loopback
from retriever.serve.routes import Service, add_routes
from retriever.serve.schemas import ApiError, Limits
from retriever.serve.server import ConnectionLimits, bind, make_server

logger = logging.getLogger("retriever")

DEFAULT_LIMITS = Limits()  # frozen: safe to share as a default
DEFAULT_CONNECTIONS = ConnectionLimits()
STATIC = Path(__file__).resolve().parent / "static"  # the search page (package data)
STOP_WAIT_S = 60.0  # the longest the lifespan's end waits for the batch under way


def create_app(
    index_path: str | Path,
    *,
    api_key: str | None = None,
    limits: Limits = DEFAULT_LIMITS,
    searcher_options: dict[str, Any] | None = None,
    allowed_hosts: Iterable[str] | None = None,
    batch_queries: int = 16,
    batch_wait_ms: float = 2.0,
) -> FastAPI:
    """The API over ``index_path`` (opened now: a bad index fails here, not on a request).

    ``api_key``: every path but ``/health``, the search page and the API docs then needs
    ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``. ``allowed_hosts``: the names a
    request's ``Host`` may give (None: any). Concurrent searches are batched, up to
    ``batch_queries`` queries, waiting at most ``batch_wait_ms`` for a batch to fill.
    ``searcher_options`` go to :meth:`Searcher.load`.
    """
    if api_key is not None and not api_key:
        raise RetrieverError("the API key is empty")
    following = FollowingSearcher(index_path, **(searcher_options or {}))
    batcher = Batcher(
        max_queries=batch_queries, wait_s=batch_wait_ms / 1000, max_queued=limits.max_queued
    )
    service = Service(following, batcher, limits)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        where = getattr(app.state, "address", None)
        logger.info(
            "serving %s%s: generation %s, %d documents, methods %s%s",
            following.path,
            f" on {where}" if where else "",
            following.generation,
            len(following.searcher),
            ", ".join(following.searcher.methods),
            ", API key required" if api_key else "",
        )
        yield
        batcher.stop(timeout=STOP_WAIT_S)
        following.close()
        logger.info("stopped serving %s (last generation %s)", following.path, following.generation)

    app = FastAPI(title="retriever", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.service = service
    app.add_middleware(
        Guard, api_key=api_key, allowed_hosts=allowed_hosts, max_body_bytes=limits.max_body_bytes
    )
    _add_error_handlers(app)
    add_routes(app, service)
    _add_pages(app, with_key=api_key is not None)
    return app


def _add_pages(app: FastAPI, *, with_key: bool) -> None:
    """The search page at ``/`` and the API docs at ``/docs``, every file served from
    this package and swagger-ui-bundle's (nothing from a CDN)."""

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/favicon.ico", include_in_schema=False)
    def no_icon() -> Response:
        return Response(status_code=204)  # a browser asks; there is none

    assets = _swagger_assets()

    @app.get("/docs", include_in_schema=False)
    def docs() -> FileResponse:
        if assets is None:
            raise ApiError(
                501, "the API docs need swagger-ui-bundle-v2: pip install 'retriever[serve]'"
            )
        return FileResponse(STATIC / "docs.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    if assets is not None:
        app.mount("/docs-assets", StaticFiles(directory=assets), name="docs-assets")
    if with_key:
        _declare_key(app)


def _swagger_assets() -> Path | None:
    """Swagger UI's files, or None without swagger-ui-bundle-v2 (the API still serves;
    only /docs says what is missing)."""
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        return None
    return Path(str(swagger_ui_path))


def _declare_key(app: FastAPI) -> None:
    """Name the key header in the OpenAPI schema, so /docs offers to send it."""
    plain = app.openapi

    def openapi() -> dict[str, Any]:
        schema = plain()
        schema.setdefault("components", {})["securitySchemes"] = {
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}
        }
        schema["security"] = [{"apiKey": []}]
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def refused(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RetrieverError)
    async def user_error(request: Request, exc: RetrieverError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=400)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": _validation_line(exc)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception) -> JSONResponse:
        # A bug, not the user's: the traceback goes to the log, one line to the client.
        logger.error("internal error on %s", request.url.path, exc_info=exc)
        return JSONResponse(
            {"error": f"internal error ({type(exc).__name__}); see the server's log"},
            status_code=500,
        )


def _validation_line(exc: RequestValidationError) -> str:
    """FastAPI's list of problems as one line: ``where: what; ...``."""
    problems = []
    for error in exc.errors():
        if error.get("type") == "json_invalid":
            return "bad request: the body is not valid JSON"
        where = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
        problems.append(f"{where or 'body'}: {error.get('msg', 'invalid')}")
    return "bad request: " + "; ".join(problems)


def serve(
    index_path: str | Path,
    host: str = "127.0.0.1",
    port: int = 8080,
    api_key_file: str | Path | None = None,
    *,
    limits: Limits = DEFAULT_LIMITS,
    connections: ConnectionLimits = DEFAULT_CONNECTIONS,
    allowed_hosts: Iterable[str] | None = (),
    shutdown_timeout_s: float = 10.0,
    searcher_options: dict[str, Any] | None = None,
    **batching: Any,
) -> None:
    """Serve ``index_path`` until SIGINT or SIGTERM; the key, if any, is the file's first
    line. The port is taken before the model loads. ``allowed_hosts`` empty: the bound
    address and this machine's names (see :func:`default_allowed_hosts`); None: any.
    At a stop, the work under way gets ``shutdown_timeout_s`` seconds (less one, for
    queued work to be refused cleanly), then is cancelled."""
    api_key = read_api_key(api_key_file) if api_key_file is not None else None
    if not is_loopback(host) and api_key is None:
        logger.warning(
            "serving on %s without --api-key-file: anyone who can reach this machine can "
            "search the index and read its documents",
            host,
        )
    hosts = default_allowed_hosts(host) if allowed_hosts == () else allowed_hosts
    listener = bind(host, port)
    try:
        app = create_app(
            index_path,
            api_key=api_key,
            limits=limits,
            searcher_options=searcher_options,
            allowed_hosts=hosts,
            **batching,
        )
    except BaseException:
        listener.close()
        raise
    app.state.address = f"http://{host}:{port}"
    batcher = app.state.service.batcher
    server = make_server(
        app,
        limits=connections,
        shutdown_timeout_s=shutdown_timeout_s,
        on_stop=lambda: _stop_later(batcher, max(0.0, shutdown_timeout_s - 1)),
    )
    server.run(sockets=[listener])


def _stop_later(batcher: Batcher, seconds: float) -> None:
    """At a stop signal: queued work may still finish for ``seconds``, then is refused."""
    logger.info("stopping: finishing the work under way (at most %.0f s)", seconds)
    timer = threading.Timer(seconds, batcher.stop)
    timer.daemon = True
    timer.start()


def read_api_key(path: str | Path) -> str:
    """The key in ``path`` (surrounding whitespace dropped); refused in one line. A key is
    printable ASCII: HTTP header values are not UTF-8, so another key could never match."""
    try:
        key = Path(path).expanduser().read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise RetrieverError(f"cannot read the API key file {path}: {reason}") from None
    if not key or "\n" in key:
        raise RetrieverError(f"the API key file {path} must hold one key on one line")
    if not (key.isascii() and key.isprintable()):
        raise RetrieverError(
            f"the API key in {path} must be printable ASCII (HTTP headers carry no other "
            "characters reliably)"
        )
    return key


__all__ = ["Limits", "create_app", "read_api_key", "serve"]
