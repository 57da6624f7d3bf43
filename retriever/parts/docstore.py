"""LMDB docstore: document key -> document, and document id -> key.

A document's key is the int64 id its vectors carry in every retriever (the FAISS id, the
sparse and BM25 key arrays), so a search hit reads its document in one lookup. Keys are
given in corpus order and never reused: an added document takes the next free key. Writes
go in batched transactions and the map grows when full; searchers open it read-only.
"""

from __future__ import annotations

import hashlib
import json
import weakref
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import lmdb

from retriever.core.errors import RetrieverError
from retriever.data.datasets import Document

DOCSTORE_DIR = "docstore"
_DOCS = b"docs"
_IDS = b"ids"
_INITIAL_MAP_SIZE = 64 << 20
_DIGEST_MODULUS = 1 << 256
# Ids quoted in a message are cut to this many characters: an error stays one readable
# line whatever id a user passed (a 10,000-character id once filled a terminal).
_SHOWN_ID_CHARS = 60
# Every record opens with its id (``_encode`` writes ``_id`` first), so an id is read
# from the record's head without decoding its text.
_ID_HEAD = b'{"_id": "'
# Read-only environments by (folder, inode of its data file); weak, so that an environment
# closes as soon as no docstore holds it, and a rebuilt folder (new inode) opens afresh.
_open_environments: weakref.WeakValueDictionary[tuple[str, int], lmdb.Environment] = (
    weakref.WeakValueDictionary()
)


def _key_bytes(key: int) -> bytes:
    # Big-endian so that LMDB's byte order is key order.
    return int(key).to_bytes(8, "big")


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
    try:
        data = json.loads(raw)
        return Document(data["_id"], data["title"], data["text"], data.get("metadata") or {})
    except (ValueError, KeyError, TypeError) as exc:
        raise RetrieverError(
            f"the docstore holds a damaged document record ({type(exc).__name__}: {exc}); "
            "rebuild the index"
        ) from None


def _decode_id(raw: bytes) -> str:
    end = raw.find(b'"', len(_ID_HEAD))
    if raw.startswith(_ID_HEAD) and end >= 0:
        escaped = raw[len(_ID_HEAD) : end]
        # A backslash means JSON escapes (a quote in the id ends the slice early): those
        # rare ids, and records in any other shape, take the full decode.
        if b"\\" not in escaped:
            try:
                return escaped.decode("utf-8")
            except UnicodeDecodeError:
                pass
    return _decode(raw).id


def shown_id(doc_id: str) -> str:
    """``doc_id`` as a message quotes it: ``repr`` (escapes keep it on one line), cut to its
    first characters when long, with its length."""
    if not isinstance(doc_id, str) or len(doc_id) <= _SHOWN_ID_CHARS:
        return repr(doc_id)
    return f"{doc_id[:_SHOWN_ID_CHARS]!r}… ({len(doc_id)} characters)"


def shown_ids(doc_ids: Sequence[str], limit: int = 5) -> str:
    """The first ``limit`` of ``doc_ids`` as a message lists them (``...`` when more)."""
    shown = ", ".join(shown_id(doc_id) for doc_id in doc_ids[:limit])
    return shown + (" ..." if len(doc_ids) > limit else "")


def _id_key(env: lmdb.Environment, doc_id: str) -> bytes | None:
    """``doc_id``'s LMDB key, or None for an id no docstore can hold (empty, longer than
    LMDB's key limit, or not encodable as UTF-8): such an id is simply not there, where LMDB
    would raise on the lookup."""
    try:
        raw = doc_id.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return raw if 0 < len(raw) <= env.max_key_size() else None


def content_digest(documents: Iterable[Document]) -> int:
    """An order-free digest of a set of documents: the sum of their sha256 modulo 2^256.

    Adding a document adds its hash and deleting subtracts it, so the manifest keeps a
    true digest of the collection through every add and delete without rereading it.
    """
    total = 0
    for document in documents:
        hashed = hashlib.sha256(
            "\0".join((document.id, document.title, document.text)).encode("utf-8")
        ).digest()
        total = (total + int.from_bytes(hashed, "big")) % _DIGEST_MODULUS
    return total


def combine_digests(base: int, added: int = 0, removed: int = 0) -> int:
    return (base + added - removed) % _DIGEST_MODULUS


class DocStore:
    """Read access to an index's documents; build one with :meth:`DocStore.write`."""

    def __init__(self, env: lmdb.Environment) -> None:
        self._env = env
        self._docs = env.open_db(_DOCS, create=False)
        self._ids = env.open_db(_IDS, create=False)
        # Read-only and never changed in place (a change writes a new generation), so
        # the count read once here stays true.
        with env.begin(db=self._docs) as txn:
            self._count = int(txn.stat(self._docs)["entries"])

    @staticmethod
    def write(
        folder: Path,
        documents: Iterable[Document],
        *,
        first_key: int = 0,
        batch_size: int = 1000,
    ) -> int:
        """Write ``documents`` under keys ``first_key, first_key + 1, ...``; returns how many."""
        with DocStoreWriter(folder) as writer:
            batch: list[Document] = []
            key = first_key
            for document in documents:
                batch.append(document)
                if len(batch) == batch_size:
                    writer.put(range(key, key + len(batch)), batch)
                    key += len(batch)
                    batch = []
            if batch:
                writer.put(range(key, key + len(batch)), batch)
                key += len(batch)
        return key - first_key

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
            _check_not_truncated(env, data_file)
            _open_environments[key] = env
        try:
            return cls(env)
        except lmdb.Error as exc:
            raise RetrieverError(
                f"the docstore {folder} is damaged ({exc}); rebuild the index"
            ) from None

    def __enter__(self) -> DocStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return self._count

    def get(self, key: int) -> Document:
        return self.get_many([key])[0]

    def get_many(self, keys: Sequence[int]) -> list[Document]:
        return [_decode(raw) for raw in self._records(keys)]

    def ids_of(self, keys: Sequence[int]) -> list[str]:
        """The document ids of ``keys``, read without decoding the documents' text."""
        return [_decode_id(raw) for raw in self._records(keys)]

    def _environment(self) -> lmdb.Environment:
        # A closed docstore has let go of its environment: say so, not AttributeError.
        if self._env is None:
            raise RetrieverError(
                "the index's docstore is closed: read a ranking's hits before closing its Searcher"
            )
        return self._env

    def _records(self, keys: Sequence[int]) -> list[bytes]:
        with self._environment().begin(db=self._docs) as txn:
            found = []
            for key in keys:
                raw = txn.get(_key_bytes(key))
                if raw is None:
                    raise RetrieverError(
                        f"the docstore has no document with key {key}: the index is "
                        "inconsistent; rebuild it"
                    )
                found.append(raw)
            return found

    def key_of(self, doc_id: str) -> int | None:
        return self.keys_of([doc_id]).get(doc_id)

    def keys_of(self, doc_ids: Iterable[str]) -> dict[str, int]:
        """``{id: key}`` for the ids the docstore holds (the others are left out)."""
        found = {}
        with self._environment().begin(db=self._ids) as txn:
            for doc_id in doc_ids:
                key = _id_key(self._env, doc_id)
                raw = None if key is None else txn.get(key)
                if raw is not None:
                    found[doc_id] = int.from_bytes(raw, "big")
        return found

    def items(self) -> Iterator[tuple[int, Document]]:
        """``(key, document)`` in key order."""
        with self._env.begin(db=self._docs) as txn:
            for raw_key, raw in txn.cursor():
                yield int.from_bytes(raw_key, "big"), _decode(raw)

    @property
    def next_key(self) -> int:
        """One past the largest key ever given (keys are never reused)."""
        with self._env.begin(db=self._docs) as txn:
            cursor = txn.cursor()
            return int.from_bytes(cursor.key(), "big") + 1 if cursor.last() else 0

    def __iter__(self) -> Iterator[Document]:
        for _, document in self.items():
            yield document

    def close(self) -> None:
        """Let go of the environment; it closes when no open docstore of the folder uses it
        (environments are held only by docstores, so the last one's release frees it)."""
        self._env = self._docs = self._ids = None


class DocStoreWriter:
    """Writes into a docstore folder (new, or a copy made by :func:`copy_docstore`)."""

    def __init__(self, folder: Path) -> None:
        # No lock.mdb: LMDB writes its lock table through a memory map, and a write to a
        # mapped page on a full disk kills the process with SIGBUS instead of raising
        # ENOSPC. One writer at a time holds the index's writer lock, and readers open
        # published generations with lock=False too, so LMDB's own lock guards nothing.
        self._env = lmdb.open(
            str(folder), map_size=_INITIAL_MAP_SIZE, max_dbs=2, subdir=True, lock=False
        )
        self._docs = self._env.open_db(_DOCS)
        self._ids = self._env.open_db(_IDS)

    def __enter__(self) -> DocStoreWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self._env.sync(True)
        self._env.close()

    def put(self, keys: Iterable[int], documents: Sequence[Document]) -> None:
        def write(txn: lmdb.Transaction) -> None:
            for key, document in zip(keys, documents, strict=True):
                raw_key = _key_bytes(key)
                txn.put(raw_key, _encode(document), db=self._docs)
                txn.put(document.id.encode("utf-8"), raw_key, db=self._ids)

        self._retry_when_full(write)

    def delete(self, doc_ids: Iterable[str]) -> list[tuple[int, Document]]:
        """Remove documents by id; returns the ``(key, document)`` pairs removed."""
        removed: list[tuple[int, Document]] = []

        def write(txn: lmdb.Transaction) -> None:
            removed.clear()
            for doc_id in doc_ids:
                id_key = _id_key(self._env, doc_id)
                raw_key = None if id_key is None else txn.pop(id_key, db=self._ids)
                if raw_key is None:
                    continue
                raw = txn.pop(raw_key, db=self._docs)
                removed.append((int.from_bytes(raw_key, "big"), _decode(raw)))

        doc_ids = list(doc_ids)
        self._retry_when_full(write)
        return removed

    def _retry_when_full(self, write: object) -> None:
        while True:
            try:
                with self._env.begin(write=True) as txn:
                    write(txn)
                return
            except lmdb.MapFullError:
                # The aborted transaction wrote nothing: grow the map and replay it.
                self._env.set_mapsize(self._env.info()["map_size"] * 2)


def copy_docstore(source: Path, destination: Path) -> None:
    """A compacted copy of a docstore, to change in a new generation (through the shared
    read-only environment: LMDB refuses a second open of one environment in a process)."""
    destination.mkdir(parents=True, exist_ok=True)
    with DocStore.open(source) as store:
        store._env.copy(str(destination), compact=True)


def _check_not_truncated(env: lmdb.Environment, data_file: Path) -> None:
    """Refuse a data file shorter than the pages LMDB says it holds: reading past its end
    would kill the process with SIGBUS instead of raising."""
    try:
        pages = env.info()["last_pgno"] + 1
        needed = pages * env.stat()["psize"]
        size = data_file.stat().st_size
    except (lmdb.Error, OSError) as exc:
        raise RetrieverError(f"the docstore {data_file.parent} is damaged ({exc})") from None
    if size < needed:
        raise RetrieverError(
            f"the docstore {data_file.parent} is truncated ({size} bytes, LMDB needs {needed}); "
            "rebuild the index"
        )
