"""LMDB docstore: row number -> document, and document id -> row number.

Rows are the FAISS ids, so a search hit's row reads its document in one lookup. Writes
go in batched transactions and the map grows when full; searchers open it read-only.
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import lmdb

from retriever.datasets import Document
from retriever.errors import RetrieverError

DOCSTORE_DIR = "docstore"
_DOCS = b"docs"
_IDS = b"ids"
_INITIAL_MAP_SIZE = 64 << 20
# Read-only environments by (folder, inode of its data file); weak, so that an environment
# closes as soon as no docstore holds it, and a rebuilt folder (new inode) opens afresh.
_open_environments: weakref.WeakValueDictionary[tuple[str, int], lmdb.Environment] = (
    weakref.WeakValueDictionary()
)


def _row_key(row: int) -> bytes:
    # Big-endian so that LMDB's byte order is row order.
    return row.to_bytes(8, "big")


def _encode(document: Document) -> bytes:
    return json.dumps(
        {
            "_id": document.id,
            "title": document.title,
            "text": document.text,
            "metadata": document.metadata,
        },
        ensure_ascii=False,
    ).encode("utf-8")


def _decode(raw: bytes) -> Document:
    data = json.loads(raw)
    return Document(data["_id"], data["title"], data["text"], data["metadata"])


class DocStore:
    """Read access to an index's documents; build one with :meth:`DocStore.write`."""

    def __init__(self, env: lmdb.Environment) -> None:
        self._env = env
        self._docs = env.open_db(_DOCS, create=False)
        self._ids = env.open_db(_IDS, create=False)

    @staticmethod
    def write(folder: Path, documents: Iterable[Document], *, batch_size: int = 1000) -> int:
        """Write ``documents`` as rows 0, 1, ... in order; returns the number written."""
        env = lmdb.open(str(folder), map_size=_INITIAL_MAP_SIZE, max_dbs=2, subdir=True)
        try:
            docs_db = env.open_db(_DOCS)
            ids_db = env.open_db(_IDS)
            batch: list[Document] = []
            row = 0
            for document in documents:
                batch.append(document)
                if len(batch) == batch_size:
                    _put_batch(env, docs_db, ids_db, row, batch)
                    row += len(batch)
                    batch = []
            if batch:
                _put_batch(env, docs_db, ids_db, row, batch)
                row += len(batch)
            env.sync(True)
            return row
        finally:
            env.close()

    @classmethod
    def open(cls, folder: Path) -> DocStore:
        """Open read-only; docstores of one folder share one LMDB environment.

        LMDB refuses a second open of an environment in one process, and a user who loads
        the same index twice (a notebook cell run again) should not have to close the
        first searcher.
        """
        data_file = Path(folder) / "data.mdb"
        try:
            key = (str(Path(folder).resolve()), data_file.stat().st_ino)
        except OSError as exc:
            raise RetrieverError(f"cannot open the docstore {folder}: {exc.strerror}") from None
        env = _open_environments.get(key)
        if env is None:
            try:
                env = lmdb.open(
                    str(folder), readonly=True, lock=False, max_dbs=2, subdir=True, readahead=False
                )
            except lmdb.Error as exc:
                raise RetrieverError(f"cannot open the docstore {folder}: {exc}") from None
            _open_environments[key] = env
        return cls(env)

    def __len__(self) -> int:
        with self._env.begin(db=self._docs) as txn:
            return txn.stat(self._docs)["entries"]

    def get(self, row: int) -> Document:
        return self.get_many([row])[0]

    def get_many(self, rows: Sequence[int]) -> list[Document]:
        with self._env.begin(db=self._docs) as txn:
            found = []
            for row in rows:
                raw = txn.get(_row_key(int(row)))
                if raw is None:
                    raise KeyError(f"no document at row {row}")
                found.append(_decode(raw))
            return found

    def row_of(self, doc_id: str) -> int | None:
        with self._env.begin(db=self._ids) as txn:
            raw = txn.get(doc_id.encode("utf-8"))
        return None if raw is None else int.from_bytes(raw, "big")

    def __iter__(self) -> Iterator[Document]:
        with self._env.begin(db=self._docs) as txn:
            for _, raw in txn.cursor():
                yield _decode(raw)

    def close(self) -> None:
        """Let go of the environment; it closes when no open docstore of the folder uses it
        (environments are held only by docstores, so the last one's release frees it)."""
        self._env = self._docs = self._ids = None


def _put_batch(
    env: lmdb.Environment, docs_db: object, ids_db: object, first_row: int, batch: list[Document]
) -> None:
    while True:
        try:
            with env.begin(write=True) as txn:
                for offset, document in enumerate(batch):
                    key = _row_key(first_row + offset)
                    txn.put(key, _encode(document), db=docs_db)
                    txn.put(document.id.encode("utf-8"), key, db=ids_db)
            return
        except lmdb.MapFullError:
            # The aborted transaction wrote nothing: grow the map and replay the batch.
            env.set_mapsize(env.info()["map_size"] * 2)
