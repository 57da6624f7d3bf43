"""Read BEIR-format collections (a folder with corpus.jsonl, queries.jsonl, qrels/) or a
JSONL file of documents, checking every line and naming the file and line of any fault.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retriever.errors import RetrieverError

logger = logging.getLogger(__name__)


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


def _jsonl_records(path: Path) -> Iterator[tuple[int, bytes, dict[str, Any]]]:
    """Yield ``(line number, raw bytes, object)`` for each non-blank line."""
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise RetrieverError(f"cannot read {path}: {exc.strerror}") from exc
    with handle:
        for number, raw in enumerate(handle, start=1):
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
    if not doc_id:
        raise RetrieverError(f'{path}:{number}: empty "_id"')
    return doc_id


def _string_field(path: Path, number: int, record: dict[str, Any], name: str) -> str:
    value = record.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise RetrieverError(f'{path}:{number}: field "{name}" must be a string')
    return value


def corpus_file(dataset: str | Path) -> Path:
    """The documents file of a dataset: a BEIR folder's corpus.jsonl, or a JSONL file."""
    path = Path(dataset).expanduser()
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


def load_corpus(dataset: str | Path, limit: int | None = None) -> Corpus:
    """Read the first ``limit`` documents (all by default) in file order.

    Every line must be a JSON object with a unique, non-empty ``_id``; ``title`` and
    ``text`` are optional strings, and other fields are kept as metadata. Documents with
    neither title nor text are skipped with a warning and reported in
    ``Corpus.skipped_empty``.
    """
    if limit is not None and limit < 1:
        raise RetrieverError(f"--limit must be a positive number of documents, got {limit}")
    path = corpus_file(dataset)
    digest = hashlib.sha256()
    documents: list[Document] = []
    skipped: list[str] = []
    first_line: dict[str, int] = {}
    for number, raw, record in _jsonl_records(path):
        if limit is not None and len(documents) + len(skipped) >= limit:
            break
        digest.update(raw)
        doc_id = _record_id(path, number, record)
        if doc_id in first_line:
            raise RetrieverError(
                f"{path}:{number}: duplicate document id {doc_id!r} "
                f"(first seen on line {first_line[doc_id]})"
            )
        first_line[doc_id] = number
        title = _string_field(path, number, record, "title")
        text = _string_field(path, number, record, "text")
        if not title.strip() and not text.strip():
            skipped.append(doc_id)
            continue
        metadata = record.get("metadata") if isinstance(record.get("metadata"), dict) else {}
        extra = {k: v for k, v in record.items() if k not in ("_id", "title", "text", "metadata")}
        documents.append(Document(doc_id, title, text, {**metadata, **extra}))
    if skipped:
        logger.warning(
            "skipped %d document(s) with neither title nor text: %s%s",
            len(skipped),
            ", ".join(skipped[:5]),
            " ..." if len(skipped) > 5 else "",
        )
    if not documents:
        raise RetrieverError(f"{path} holds no documents with a title or text")
    return Corpus(documents, path, digest.hexdigest(), skipped)


def load_queries(dataset: str | Path) -> dict[str, str]:
    """``{query_id: text}`` from a BEIR folder's queries.jsonl."""
    path = Path(dataset).expanduser() / "queries.jsonl"
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
    path = Path(dataset).expanduser() / "qrels" / f"{split}.tsv"
    if not path.is_file():
        raise RetrieverError(f"{dataset} has no qrels/{split}.tsv")
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
    path = Path(path).expanduser()
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
