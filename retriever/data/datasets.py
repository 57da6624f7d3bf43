"""Read BEIR-format collections (a folder with corpus.jsonl, queries.jsonl, qrels/) or a
JSONL file of documents, checking every line and naming the file and line of any fault.
"""

from __future__ import annotations

import array
import csv
import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retriever.core.errors import RetrieverError
from retriever.data.catalog import local_dataset, qrels_splits

logger = logging.getLogger(__name__)

# A document's id is its key in the docstore (LMDB), whose keys hold at most 511 bytes:
# a longer id is refused while the corpus is scanned, not after hours of encoding.
MAX_ID_BYTES = 511


@dataclass(frozen=True)
class Document:
    id: str
    title: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def embedding_text(self) -> str:
        """What the encoder sees: ``title + " " + text`` (either may be empty)."""
        return f"{self.title} {self.text}".strip()


@dataclass
class Corpus:
    documents: list[Document]
    source: Path
    sha256: str
    skipped_empty: list[str]

    def __len__(self) -> int:
        return len(self.documents)


def _jsonl_records(
    path: Path, start: tuple[int, int] = (0, 1)
) -> Iterator[tuple[int, bytes, dict[str, Any]]]:
    """Yield ``(line number, raw bytes, object)`` for each non-blank line, from the byte
    offset and line number ``start``."""
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise RetrieverError(f"cannot read {path}: {exc.strerror}") from exc
    with handle:
        handle.seek(start[0])
        for number, raw in enumerate(handle, start=start[1]):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise RetrieverError(
                    f"{path}:{number}: not valid UTF-8 (byte 0x{raw[exc.start]:02x} at "
                    f"column {exc.start + 1}); re-encode the file as UTF-8"
                ) from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise RetrieverError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
            if not isinstance(record, dict):
                raise RetrieverError(f"{path}:{number}: expected a JSON object, got {record!r:.60}")
            yield number, raw, record


def _record_id(path: Path, number: int, record: dict[str, Any]) -> str:
    raw_id = record.get("_id")
    if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)):
        raise RetrieverError(f'{path}:{number}: missing or non-string "_id" field')
    doc_id = str(raw_id).strip()
    _check_unicode(path, number, "_id", doc_id)
    if not doc_id:
        raise RetrieverError(f'{path}:{number}: empty "_id"')
    return doc_id


def _check_id_size(path: Path, number: int, doc_id: str) -> None:
    size = len(doc_id.encode("utf-8"))
    if size > MAX_ID_BYTES:
        raise RetrieverError(
            f"{path}:{number}: document id {doc_id[:40]!r}... is {size:,} bytes long (UTF-8); "
            f"ids hold at most {MAX_ID_BYTES} bytes (the docstore's key limit): shorten it"
        )


def _string_field(path: Path, number: int, record: dict[str, Any], name: str) -> str:
    value = record.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise RetrieverError(f'{path}:{number}: field "{name}" must be a string')
    _check_unicode(path, number, name, value)
    return value


def _check_unicode(path: Path, number: int, name: str, value: str) -> None:
    # JSON escapes can spell lone surrogates ("\\ud800") that no tokenizer accepts.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise RetrieverError(
            f'{path}:{number}: field "{name}" holds an invalid Unicode character '
            f"(U+{ord(value[exc.start]):04X} at character {exc.start + 1}); fix the text"
        ) from None


def corpus_file(dataset: str | Path) -> Path:
    """The documents file of a dataset: a BEIR folder's corpus.jsonl, or a JSONL file
    (``beir:NAME`` is the cached folder, downloaded on first use)."""
    path = Path(local_dataset(dataset)).expanduser()
    if path.is_dir():
        path = path / "corpus.jsonl"
        if not path.is_file():
            raise RetrieverError(
                f"{dataset} is a folder without corpus.jsonl: give a BEIR dataset folder "
                "(corpus.jsonl, queries.jsonl, qrels/) or a JSONL file of documents"
            )
    elif not path.is_file():
        raise RetrieverError(f"dataset {dataset} does not exist")
    return path.resolve()


@dataclass(frozen=True)
class CorpusScan:
    """What one validating pass over a corpus file found, before anything is encoded.

    ``count`` documents are kept (those with a title or text); ``sha256`` covers the raw
    bytes of every line read, so it names exactly this file (and ``limit``).
    """

    source: Path
    sha256: str
    count: int
    limit: int | None
    skipped_empty: list[str]
    # The raw bytes of the documents kept: what their copies in a store or docstore take.
    document_bytes: int = 0


def _records(
    path: Path, limit: int | None, start: tuple[int, int] = (0, 1)
) -> Iterator[tuple[int, bytes, Document | None, str]]:
    """``(line, raw bytes, document or None if empty, id)`` for the first ``limit`` records
    from ``start`` (byte offset, line number)."""
    seen = 0
    for number, raw, record in _jsonl_records(path, start):
        if limit is not None and seen >= limit:
            return
        seen += 1
        doc_id = _record_id(path, number, record)
        _check_id_size(path, number, doc_id)
        title = _string_field(path, number, record, "title")
        text = _string_field(path, number, record, "text")
        if not title.strip() and not text.strip():
            yield number, raw, None, doc_id
            continue
        metadata = record.get("metadata") if isinstance(record.get("metadata"), dict) else {}
        extra = {k: v for k, v in record.items() if k not in ("_id", "title", "text", "metadata")}
        yield number, raw, Document(doc_id, title, text, {**metadata, **extra}), doc_id


def _id_fingerprint(doc_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8).digest(), "big")


def scan_corpus(dataset: str | Path, limit: int | None = None) -> CorpusScan:
    """Validate every line of a corpus in one streaming pass, holding only 8 bytes per id.

    Every line must be a JSON object with a unique, non-empty ``_id``; ``title`` and
    ``text`` are optional strings, and other fields are kept as metadata. Documents with
    neither title nor text are skipped with a warning. A fault anywhere (bad JSON, a
    duplicate id, text that is not valid Unicode) fails here, before hours of encoding.
    """
    if limit is not None and limit < 1:
        raise RetrieverError(f"--limit must be a positive number of documents, got {limit}")
    path = corpus_file(dataset)
    digest = hashlib.sha256()
    fingerprints = array.array("Q")
    skipped: list[str] = []
    count = document_bytes = 0
    for _, raw, document, doc_id in _records(path, limit):
        digest.update(raw)
        fingerprints.append(_id_fingerprint(doc_id))
        if document is None:
            skipped.append(doc_id)
        else:
            count += 1
            document_bytes += len(raw)
    _check_unique_ids(path, fingerprints, limit)
    if skipped:
        logger.warning(
            "skipped %d document(s) with neither title nor text: %s%s",
            len(skipped),
            ", ".join(skipped[:5]),
            " ..." if len(skipped) > 5 else "",
        )
    if not count:
        raise RetrieverError(f"{path} holds no documents with a title or text")
    return CorpusScan(path, digest.hexdigest(), count, limit, skipped, document_bytes)


def _check_unique_ids(path: Path, fingerprints: array.array, limit: int | None) -> None:
    import numpy as np

    hashes = np.frombuffer(fingerprints, dtype=np.uint64)
    ordered = np.sort(hashes)
    suspects = set(ordered[1:][ordered[1:] == ordered[:-1]].tolist())
    if not suspects:
        return
    # A fingerprint seen twice: find the lines exactly (almost surely a true duplicate).
    first_line: dict[str, int] = {}
    for number, _, _, doc_id in _records(path, limit):
        if _id_fingerprint(doc_id) not in suspects:
            continue
        if doc_id in first_line:
            raise RetrieverError(
                f"{path}:{number}: duplicate document id {doc_id!r} "
                f"(first seen on line {first_line[doc_id]})"
            )
        first_line[doc_id] = number


def iter_documents(scan: CorpusScan) -> Iterator[Document]:
    """The scanned corpus's kept documents in file order, read as a stream."""
    for _, _, document, _ in _records(scan.source, scan.limit):
        if document is not None:
            yield document


def chunk_starts(scan: CorpusScan, chunk_size: int) -> list[tuple[int, int]]:
    """``(byte offset, line number)`` of the first document of every chunk of
    ``chunk_size`` kept documents: where a worker starts reading its chunk."""
    starts: list[tuple[int, int]] = []
    offset, kept, seen = 0, 0, 0
    with scan.source.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if scan.limit is not None and seen >= scan.limit:
                break
            here, offset = offset, offset + len(raw)
            if not raw.decode("utf-8").strip():  # blank as the scan saw it (str.strip)
                continue
            seen += 1
            record = json.loads(raw)
            if (
                not str(record.get("title") or "").strip()
                and not str(record.get("text") or "").strip()
            ):
                continue
            if kept % chunk_size == 0:
                starts.append((here, number))
            kept += 1
    return starts


def read_chunk(scan: CorpusScan, start: tuple[int, int], count: int) -> list[Document]:
    """The ``count`` kept documents from ``start`` (see :func:`chunk_starts`)."""
    documents: list[Document] = []
    for _, _, document, _ in _records(scan.source, None, start):
        if document is not None:
            documents.append(document)
            if len(documents) == count:
                break
    return documents


def load_corpus(dataset: str | Path, limit: int | None = None) -> Corpus:
    """Read the first ``limit`` documents (all by default) in file order, into memory.

    For collections of any size, :func:`scan_corpus` and :func:`iter_documents` stream.
    """
    scan = scan_corpus(dataset, limit)
    return Corpus(list(iter_documents(scan)), scan.source, scan.sha256, scan.skipped_empty)


def load_queries(dataset: str | Path) -> dict[str, str]:
    """``{query_id: text}`` from a BEIR folder's queries.jsonl."""
    path = Path(local_dataset(dataset)).expanduser() / "queries.jsonl"
    if not path.is_file():
        raise RetrieverError(f"{dataset} has no queries.jsonl")
    queries: dict[str, str] = {}
    for number, _, record in _jsonl_records(path):
        query_id = _record_id(path, number, record)
        if query_id in queries:
            raise RetrieverError(f"{path}:{number}: duplicate query id {query_id!r}")
        queries[query_id] = _string_field(path, number, record, "text")
    return queries


def load_qrels(dataset: str | Path, split: str = "test") -> dict[str, dict[str, int]]:
    """``{query_id: {doc_id: relevance}}`` from ``qrels/<split>.tsv`` (header line first)."""
    path = Path(local_dataset(dataset)).expanduser() / "qrels" / f"{split}.tsv"
    if not path.is_file():
        splits = qrels_splits(path.parent.parent)
        has = f" (its splits: {', '.join(splits)})" if splits else ""
        raise RetrieverError(f"{dataset} has no qrels/{split}.tsv{has}")
    qrels: dict[str, dict[str, int]] = {}
    with path.open(encoding="utf-8", newline="") as handle:
        rows = csv.reader(handle, delimiter="\t")
        next(rows, None)
        for number, row in enumerate(rows, start=2):
            if not row:
                continue
            try:
                query_id, doc_id, score = row
                qrels.setdefault(query_id, {})[doc_id] = int(score)
            except ValueError:
                raise RetrieverError(
                    f"{path}:{number}: expected query-id<TAB>corpus-id<TAB>integer score"
                ) from None
    return qrels


def load_texts(path: str | Path, *, limit: int | None = None) -> list[str]:
    """Texts to study: a corpus's documents (BEIR folder or JSONL, as the encoder sees
    them) or the non-blank lines of a ``.txt`` file."""
    path = Path(local_dataset(path)).expanduser()
    if path.suffix == ".txt":
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise RetrieverError(f"cannot read {path}: {exc}") from None
        texts = [line.strip() for line in lines if line.strip()][:limit]
    else:
        texts = [d.embedding_text for d in load_corpus(path, limit=limit).documents]
    if not texts:
        raise RetrieverError(f"{path} holds no text")
    return texts
