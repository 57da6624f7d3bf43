"""Embedding stores seen from the indexes: which indexes were built from each store (their
manifests name its key), and listing and removing stores with that knowledge
(``retriever stores``)."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retriever.core.errors import RetrieverError
from retriever.core.sizes import folder_bytes
from retriever.index.manifest import read_manifest
from retriever.store.embeddings import (
    INDEXES_FILE,
    SHARDS_DIR,
    EmbeddingStore,
    key_digest,
    key_precision,
    read_store_key,
    recorded_indexes,
    store_files,
    store_folders,
    stores_root,
)

logger = logging.getLogger(__name__)


def indexes_using(folder: Path, digest: str) -> list[Path]:
    """The recorded indexes that still exist and were built from this encoding (their
    manifest names the store's key digest): a rebuilt or removed index drops out."""
    using = []
    for entry in recorded_indexes(folder / INDEXES_FILE):
        index = Path(entry)
        try:
            store = read_manifest(index).store
        except (RetrieverError, OSError):
            continue
        if isinstance(store, dict) and store.get("key_sha256") == digest:
            using.append(index)
    return using


@dataclass(frozen=True)
class StoreSummary:
    """What ``retriever stores`` shows of one store."""

    folder: Path
    bytes: int
    key: dict[str, Any]
    chunks_written: int
    indexes: list[Path]
    source: str | None

    @property
    def count(self) -> int:
        return int(self.key["source"]["count"])

    @property
    def num_chunks(self) -> int:
        return -(-self.count // int(self.key["chunk_size"]))

    @property
    def complete(self) -> bool:
        return self.chunks_written >= self.num_chunks

    def to_dict(self) -> dict[str, Any]:
        """The summary as JSON-ready data (``retriever stores --json``)."""
        key = self.key
        return {
            "folder": str(self.folder),
            "bytes": self.bytes,
            "documents": self.count,
            "complete": self.complete,
            "shards": {"written": self.chunks_written, "expected": self.num_chunks},
            "kind": key["kind"],
            "model": key["model"],
            "dtype": key["dtype"],
            "prompt": key["prompt"],
            "instruction": key["instruction"],
            "max_length": key["max_length"],
            "poolings": list(key["poolings"]),
            "precision": key_precision(key),
            "chunk_size": key["chunk_size"],
            "source": self.source,
            "key_sha256": key_digest(key),
            "indexes": [str(index) for index in self.indexes],
        }


def summarize_store(folder: Path) -> StoreSummary:
    """The summary of the store at ``folder``; refuses a folder that is not a store."""
    folder = Path(folder).expanduser().resolve()
    store = EmbeddingStore.open(folder)
    # Shard records are written last, so counting them counts the complete shards; their
    # contents are checked when an index is assembled, not here.
    written = sum(
        1 for c in range(store.num_chunks) if (store.shards_folder / f"{c:06d}.json").is_file()
    )
    return StoreSummary(
        folder=folder,
        bytes=folder_bytes(folder),
        key=store.key,
        chunks_written=written,
        indexes=indexes_using(folder, store.digest),
        source=store.source_note.get("source"),
    )


def list_stores(root: Path | None = None) -> list[StoreSummary]:
    """Every store under ``root`` (default: :func:`stores_root`); one whose key cannot be
    read (damaged, or of another version) is skipped with a warning."""
    summaries = []
    for folder in store_folders(stores_root() if root is None else root):
        try:
            summaries.append(summarize_store(folder))
        except RetrieverError as exc:
            logger.warning("skipping %s: %s", folder, exc)
    return summaries


@dataclass(frozen=True)
class RemovedStore:
    """A removed store: the indexes built from it (they keep working: an index does not
    read its store once it is built) and the files found in it that it did not write,
    which were kept."""

    folder: Path
    indexes: list[Path]
    kept: list[str]


def remove_store(folder: Path) -> RemovedStore:
    """Remove the store at ``folder``: the files it wrote, then its folders if nothing
    else is left in them."""
    folder = Path(folder).expanduser().resolve()
    key = read_store_key(folder)  # refuses a folder that is not a store
    using = indexes_using(folder, key_digest(key))
    for path in store_files(folder):
        path.unlink(missing_ok=True)
    for emptied in (folder / SHARDS_DIR, folder):
        with contextlib.suppress(OSError):
            emptied.rmdir()  # only when empty: what the store did not write stays
    kept = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    logger.info("removed the embedding store %s", folder)
    return RemovedStore(folder, using, kept)
