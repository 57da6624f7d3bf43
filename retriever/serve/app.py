"""The HTTP API: one index, searched over HTTP by ``retriever serve`` (FastAPI + uvicorn).

Every answer names the generation that gave it: the server follows the index path to
each new generation a writer publishes (:mod:`retriever.serve.follow`). A user's mistake is a
4xx JSON ``{"error": "<one line>"}``, the CLI's own message; never a traceback.

Searches are serialised by one lock: the encoder's tokenizer, the numpy thread limit a
one-query search sets (process-wide) and the docstore (LMDB opened without its lock
table) are not safe to use from several threads at once. FastAPI runs these sync
endpoints in a thread pool, so requests queue on the lock, not on the event loop.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from retriever.core.errors import RetrieverError
from retriever.serve.follow import FollowingSearcher
from retriever.serve.routes import Service, add_routes
from retriever.serve.schemas import ApiError, Limits

logger = logging.getLogger("retriever")

DEFAULT_LIMITS = Limits()  # frozen: safe to share as a default
# Answered without the API key: a load balancer's probe, and the search page's own files
# (they hold no data; the page sends the key, typed into it, with each API call).
OPEN_PATHS = frozenset({"/health", "/"})
OPEN_PREFIXES = ("/static/",)
STATIC = Path(__file__).resolve().parent / "static"  # the search page (package data)


def create_app(
    index_path: str | Path,
    *,
    api_key: str | None = None,
    limits: Limits = DEFAULT_LIMITS,
    searcher_options: dict[str, Any] | None = None,
) -> FastAPI:
    """The API over ``index_path`` (opened now: a bad index fails here, not on a request).

    ``api_key``: every path but ``/health`` and the search page's (``/``, ``/static/...``)
    then needs ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``. ``searcher_options``
    go to :meth:`Searcher.load`.
    """
    if api_key is not None and not api_key:
        raise RetrieverError("the API key is empty")
    following = FollowingSearcher(index_path, **(searcher_options or {}))
    service = Service(following, limits)

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
        following.close()
        logger.info("stopped serving %s (last generation %s)", following.path, following.generation)

    app = FastAPI(title="retriever", lifespan=lifespan)
    app.state.service = service
    _add_guards(app, api_key, limits)
    _add_error_handlers(app)
    add_routes(app, service)
    _add_page(app)
    return app


def _add_page(app: FastAPI) -> None:
    """The search page at ``/``: plain HTML, JS and CSS, all served from here (no CDN)."""

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")


def _add_guards(app: FastAPI, api_key: str | None, limits: Limits) -> None:
    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Any:
        path = request.url.path
        if api_key is not None and path not in OPEN_PATHS and not path.startswith(OPEN_PREFIXES):
            if not _key_matches(request, api_key):
                return JSONResponse(
                    {
                        "error": "missing or wrong API key: send 'Authorization: Bearer KEY' "
                        "or 'X-API-Key: KEY'"
                    },
                    status_code=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > limits.max_body_bytes:
            return JSONResponse(
                {
                    "error": f"the request body is {int(size):,} bytes; this server takes at "
                    f"most {limits.max_body_bytes:,}"
                },
                status_code=413,
            )
        return await call_next(request)


def _key_matches(request: Request, api_key: str) -> bool:
    given = request.headers.get("x-api-key")
    authorization = request.headers.get("authorization", "")
    if given is None and authorization[:7].lower() == "bearer ":
        given = authorization[7:].strip()
    # Compared as bytes in constant time: a timing side channel leaks nothing of the key.
    return given is not None and hmac.compare_digest(given.encode(), api_key.encode())


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def refused(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

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
    searcher_options: dict[str, Any] | None = None,
) -> None:
    """Serve ``index_path`` until interrupted; the key, if any, is the file's first line."""
    import uvicorn

    api_key = read_api_key(api_key_file) if api_key_file is not None else None
    app = create_app(index_path, api_key=api_key, limits=limits, searcher_options=searcher_options)
    app.state.address = f"http://{host}:{port}"
    # Our own two lines say when it starts and stops; uvicorn only warns.
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


def read_api_key(path: str | Path) -> str:
    """The key in ``path`` (surrounding whitespace dropped); refused in one line."""
    try:
        key = Path(path).expanduser().read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise RetrieverError(f"cannot read the API key file {path}: {reason}") from None
    if not key or "\n" in key:
        raise RetrieverError(f"the API key file {path} must hold one key on one line")
    return key


__all__ = ["Limits", "create_app", "read_api_key", "serve"]
