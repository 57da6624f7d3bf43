"""Serving an index over HTTP (FastAPI): the app, its routes and schemas, following new
generations, and the search page (``static/``)."""
