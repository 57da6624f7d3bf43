"""Every file of a generation proves it belongs to it, and `retriever check` proves it all.

When a generation is published, the manifest records each of its files with its size and
its SHA-256 (``files``), as a segment's files carry their checksums. Loading compares
every size, and the checksum of every file up to :data:`WHOLE_AT_LOAD` bytes; a larger
file (the FAISS index, the docstore, rescore vectors) is compared by a probe, the
checksum of its first and last :data:`PROBE` bytes, which a file copied from another
index fails. :func:`check_index` reads every byte: each file's whole checksum, then the
parts against each other (the docstore's records and keys, the dense index's ids, the
rescore keys, the sparse and BM25 keys).

Not recorded: the manifest itself, the readers' lock file, and a Milvus Lite database,
which its own server rewrites.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from retriever.core.errors import RetrieverError
from retriever.core.generations import READERS_FILE
from retriever.index.manifest import MANIFEST_FILE, Manifest

WHOLE_AT_LOAD = 128 << 10
PROBE = 64 << 10
_CHUNK = 1 << 20
_UNRECORDED_NAMES = {MANIFEST_FILE, READERS_FILE}
_UNRECORDED_FOLDERS = ("milvus.db",)


def file_records(folder: Path) -> dict[str, dict[str, Any]]:
    """``{relative path: {"bytes", "sha256"[, "probe"]}}`` of every recorded file."""
    records = {}
    for name, path in _recorded_files(folder):
        size = path.stat().st_size
        record = {"bytes": size, "sha256": _sha256(path)}
        if size > WHOLE_AT_LOAD:
            record["probe"] = _probe(path, size)
        records[name] = record
    return records


def _recorded_files(folder: Path) -> list[tuple[str, Path]]:
    """``(relative path, path)`` of the files a generation's manifest records."""
    files = []
    for path in sorted(folder.rglob("*")):
        name = path.relative_to(folder).as_posix()
        unrecorded = name in _UNRECORDED_NAMES or name.startswith(_UNRECORDED_FOLDERS)
        if path.is_file() and not path.is_symlink() and not unrecorded:
            files.append((name, path))
    return files


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _probe(path: Path, size: int) -> str:
    """The checksum of the file's first and last PROBE bytes (and its size)."""
    digest = hashlib.sha256(str(size).encode())
    with path.open("rb") as handle:
        digest.update(handle.read(PROBE))
        handle.seek(max(size - PROBE, 0))
        digest.update(handle.read(PROBE))
    return digest.hexdigest()


def file_problems(folder: Path, manifest: Manifest, *, whole: bool) -> list[str]:
    """One line per recorded file that is missing or is not the file the build wrote;
    ``whole``: every file's whole checksum, else sizes, small files and probes."""
    problems = []
    for name, record in manifest.files.items():
        path = folder / name
        if not path.is_file():
            problems.append(f"{path} is missing")
            continue
        size = path.stat().st_size
        if size != record["bytes"]:
            problems.append(
                f"{path} holds {size} bytes, the manifest recorded {record['bytes']}: it is "
                "not the file this generation wrote"
            )
        elif not _matches(path, size, record, whole=whole):
            problems.append(f"{path} does not match its checksum: it was changed or replaced")
    return problems


def _matches(path: Path, size: int, record: dict[str, Any], *, whole: bool) -> bool:
    """The file's whole checksum (always for a small file), or its head-and-tail probe."""
    if whole or "probe" not in record:
        return _sha256(path) == record["sha256"]
    return _probe(path, size) == record["probe"]


def check_files_at_load(folder: Path, manifest: Manifest) -> None:
    """Refuse, in one line naming the file, a generation whose files are not the ones its
    build wrote (sizes, small files' checksums, large files' probes)."""
    problems = file_problems(folder, manifest, whole=False)
    if problems:
        raise RetrieverError(f"{problems[0]}; run `retriever check` on the index, or rebuild it")


def check_index(folder: Path, manifest: Manifest) -> list[str]:
    """Every problem of a generation, one line each: whole checksums, files the build did
    not write, and the parts against the docstore's keys."""
    problems = file_problems(folder, manifest, whole=True)
    for name, path in _recorded_files(folder):
        if manifest.files and name not in manifest.files:
            problems.append(f"{path} is not a file this generation wrote")
    if problems:  # a changed file would make the parts' checks below report it again
        return problems
    return _part_problems(folder, manifest)


def _part_problems(folder: Path, manifest: Manifest) -> list[str]:
    """The docstore's records and keys, and each part's keys against them."""
    from retriever.parts.docstore import DOCSTORE_DIR, DocStore

    problems: list[str] = []
    try:
        with DocStore.open(folder / DOCSTORE_DIR) as docstore:
            keys = _docstore_keys(docstore, problems)
    except RetrieverError as exc:
        return [str(exc)]
    if len(keys) != manifest.count:
        problems.append(f"the docstore holds {len(keys)} documents, the manifest {manifest.count}")
    for part, held in _part_keys(folder, manifest).items():
        if isinstance(held, str):
            problems.append(held)
        elif not np.array_equal(np.sort(held), keys):
            problems.append(f"the {part} holds other document keys than the docstore")
    return problems


def _docstore_keys(docstore: Any, problems: list[str]) -> np.ndarray:
    """Every record decodes and its id leads back to its key."""
    keys = []
    try:
        for key, document in docstore.items():
            keys.append(key)
            if docstore.key_of(document.id) != key:
                problems.append(f"the docstore's id {document.id!r} does not lead to its key")
    except RetrieverError as exc:
        problems.append(str(exc))
    return np.sort(np.asarray(keys, dtype=np.int64))


def _part_keys(folder: Path, manifest: Manifest) -> dict[str, np.ndarray | str]:
    """Each part's document keys (or the one line saying why they cannot be read)."""
    from retriever.parts.bm25 import BM25_DIR, BM25Index
    from retriever.parts.dense.codes import RESCORE_KEYS_FILE
    from retriever.parts.dense.faiss_index import index_keys, load_faiss_index
    from retriever.parts.sparse import SPARSE_DIR, KeyTokenIndex

    readers = {}
    backend = manifest.backend or {}
    if backend.get("backend") == "faiss":
        binary = backend.get("storage") == "binary"
        readers["dense index"] = lambda: index_keys(load_faiss_index(folder, binary=binary))
        if (folder / RESCORE_KEYS_FILE).exists():
            readers["rescore vectors"] = lambda: np.load(folder / RESCORE_KEYS_FILE)
    if manifest.spec.sparse is not None:
        readers["sparse index"] = lambda: KeyTokenIndex.load(folder / SPARSE_DIR).keys
    if manifest.spec.bm25:
        readers["BM25 index"] = lambda: BM25Index.load(folder / BM25_DIR).keys
    held: dict[str, np.ndarray | str] = {}
    for part, read in readers.items():
        try:
            held[part] = np.asarray(read(), dtype=np.int64)
        except (RetrieverError, OSError, ValueError) as exc:
            held[part] = f"the {part} cannot be read: {exc}"
    return held
