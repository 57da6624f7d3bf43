"""Serving an index over HTTP (FastAPI): the app, its routes and schemas, the batching
search worker, the request guard, the bounded uvicorn server, following new generations,
and the search page and API docs (``static/``)."""
