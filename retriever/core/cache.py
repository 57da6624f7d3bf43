"""Where the project keeps what it makes once: converted models, weight hashes, embedding
stores and downloaded datasets. Kept free of heavy imports, so that commands that only
read the cache (``retriever datasets``, ``retriever stores``) start at once."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The cache's root: ``$RETRIEVER_CACHE``, else ``$XDG_CACHE_HOME/retriever``, else
    ``~/.cache/retriever``."""
    root = os.environ.get("RETRIEVER_CACHE")
    if root:
        return Path(root).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "retriever"
