"""Installed package versions, as index manifests and machine records write them."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def installed_version(*distributions: str) -> str | None:
    """The version of the first of ``distributions`` that is installed (None when none is:
    FAISS, for one, installs under several distribution names)."""
    for distribution in distributions:
        try:
            return version(distribution)
        except PackageNotFoundError:
            continue
    return None
