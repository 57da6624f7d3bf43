"""The embedding store: raw pooled embeddings on disk, one shard per chunk of documents.

Encode once, index many: every index, benchmark variant or baseline reads these shards
and never runs the LLM again. A store is a folder::

    store.json               what was encoded: model weights, dtype, prompt, instruction,
                             max length, the source's sha256 and count, the poolings kept,
                             their precision, the chunk size
    shards/000012.mean.npy   (n, d) raw pooled embeddings of chunk 12 (float16 by default,
                             or float32), one file per pooling kept
    shards/000012.docs.jsonl the chunk's documents, in corpus order
    shards/000012.json       the shard's record, written last: a shard without it is
                             incomplete and is encoded again

Chunk ``c`` holds kept documents ``[c * chunk_size, (c + 1) * chunk_size)`` in corpus
order, so any process can encode any chunk and the shards of many processes (``--shard
I/N`` takes the chunks with ``c % N == I``) assemble into the same index as one process.

A store keeps only the poolings asked for (mean and last token read the same forward
pass, so a benchmark asks for both at the price of one), as float16 unless float32 is
asked: the measured cosine to float32 and SciFact's nDCG@10 are in docs/builds.md.

The chunk size is not part of a store's name: the first process to create a store sizes
its chunks (by time, see :mod:`retriever.store.pacing`) and every later one, resuming or
encoding another slice, uses the size the store holds. A store of version 1 (every
pooling, float32, before either was a choice) is still read and resumed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from retriever.core.cache import cache_dir
from retriever.core.config import DEFAULT_STORE_PRECISION, POOLINGS, STORE_PRECISIONS
from retriever.core.errors import RetrieverError
from retriever.data.datasets import CorpusScan, Document

logger = logging.getLogger(__name__)

STORE_FORMAT = "retriever-embeddings"
STORE_VERSION = 2
READABLE_VERSIONS = (1, 2)
STORE_FILE = "store.json"
SOURCE_FILE = "source.json"
SHARDS_DIR = "shards"
# The indexes built from the store (their paths), so that `retriever stores` can say what
# uses a store before it is removed; a note, not part of the store's data.
INDEXES_FILE = "indexes.json"
# The chunk size when none is chosen by time: Ray builds, in-memory collections.
DEFAULT_CHUNK_SIZE = 4096
# float16's largest finite value: a vector beyond it cannot be stored in float16.
_FLOAT16_MAX = float(np.finfo(np.float16).max)


def encoding_key(
    encoder: Any,
    source_sha256: str,
    count: int,
    *,
    kind: str,
    chunk_size: int | None,
    poolings: Iterable[str] = POOLINGS,
    precision: str = DEFAULT_STORE_PRECISION,
) -> dict[str, Any]:
    """Everything that makes two encodings of a collection the same vectors. ``chunk_size``
    None: not chosen yet (a store's own size is adopted when it is opened)."""
    if precision not in STORE_PRECISIONS:
        raise RetrieverError(
            f"unknown store precision {precision!r}; choose one of {', '.join(STORE_PRECISIONS)}"
        )
    asked = set(poolings)
    unknown = asked - set(POOLINGS)
    if unknown or not asked:
        raise RetrieverError(
            f"a store keeps poolings among {', '.join(POOLINGS)}, got {sorted(asked) or 'none'}"
        )
    config = encoder.config
    return {
        "format": STORE_FORMAT,
        "version": STORE_VERSION,
        "kind": kind,
        "model": encoder.resolved.identity(),
        "dtype": str(encoder.dtype).removeprefix("torch."),
        "prompt": config.prompt,
        "instruction": config.query_instruction
        if kind == "queries"
        else config.document_instruction,
        "max_length": config.max_length,
        "poolings": [p for p in POOLINGS if p in asked],
        "precision": precision,
        # Only another runtime is named, so that torch's keys stay those of earlier stores.
        **({"runtime": encoder.runtime} if getattr(encoder, "runtime", "torch") != "torch" else {}),
        "source": {"sha256": source_sha256, "count": count},
        "chunk_size": chunk_size,
    }


def key_precision(key: dict[str, Any]) -> str:
    """The precision of a store's vectors (a version 1 store's are float32)."""
    return str(key.get("precision", "float32"))


def _identity(key: dict[str, Any]) -> dict[str, Any]:
    """What must agree for one store to serve another's request: the key without its
    version, chunk size, poolings and precision (those are compared apart)."""
    dropped = {"version", "chunk_size", "poolings", "precision"}
    identity = {k: v for k, v in key.items() if k not in dropped}
    identity["model"] = {"weights_sha256": key["model"]["weights_sha256"]}
    return identity


def covers(held: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """Whether a store of key ``held`` holds the vectors ``wanted`` asks for: the same
    encoding, at the same precision, with every pooling asked (a store of both poolings
    serves a request for one)."""
    return (
        _identity(held) == _identity(wanted)
        and key_precision(held) == key_precision(wanted)
        and set(wanted["poolings"]) <= set(held["poolings"])
    )


def key_digest(key: dict[str, Any]) -> str:
    """The key's identity; the model's name is a label, its weights hash is what counts."""
    identity = {**key, "model": {"weights_sha256": key["model"]["weights_sha256"]}}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def describe_difference(held: dict[str, Any], wanted: dict[str, Any]) -> str:
    fields = {
        "model": lambda k: f"{k['model']['name']} ({k['model']['weights_sha256'][:12]})",
        "dtype": lambda k: k["dtype"],
        "prompt": lambda k: k["prompt"],
        "instruction": lambda k: repr(k["instruction"]),
        "max length": lambda k: k["max_length"],
        "corpus": lambda k: (
            f"{k['source']['count']} documents, sha256 {k['source']['sha256'][:12]}"
        ),
        "kind": lambda k: k["kind"],
        "runtime": lambda k: k.get("runtime", "torch"),
        "precision": key_precision,
        "poolings": lambda k: "+".join(k["poolings"]),
    }
    changed = [
        f"{name} {show(held)} there, {show(wanted)} here"
        for name, show in fields.items()
        if show(held) != show(wanted)
    ]
    return "; ".join(changed) or "a different store format"


@dataclass(frozen=True)
class Shard:
    """One complete chunk: its number and the paths of its files."""

    chunk: int
    record: dict[str, Any]
    folder: Path
    poolings: tuple[str, ...] = POOLINGS
    precision: str = "float32"

    @property
    def count(self) -> int:
        return int(self.record["count"])

    def path(self, suffix: str) -> Path:
        return self.folder / f"{self.chunk:06d}.{suffix}"

    def embeddings(self, pooling: str) -> np.ndarray:
        """``(n, d)`` in the store's precision, memory-mapped (read lazily, never all at
        once); callers convert to float32 what they compute with."""
        if pooling not in self.poolings:
            raise RetrieverError(
                f"the embedding store {self.folder.parent} keeps {'+'.join(self.poolings)} "
                f"pooling only, not {pooling}: encode a store with that pooling (--pooling "
                f"{pooling})"
            )
        path = self.path(f"{pooling}.npy")
        try:
            return np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            # Checked when the store was opened; this is a file damaged since then.
            raise RetrieverError(self.damaged(f"{path.name}: {_first_line(exc)}")) from None

    def documents(self) -> Iterator[Document]:
        path = self.path("docs.jsonl")
        with path.open("rb") as handle:
            for number, raw in enumerate(handle, start=1):
                try:
                    data = json.loads(raw.decode("utf-8"))
                    document = Document(data["_id"], data["title"], data["text"], data["metadata"])
                except (ValueError, KeyError, TypeError):
                    problem = f"{path.name} line {number} is not a stored document"
                    raise RetrieverError(self.damaged(problem)) from None
                yield document

    def inspect(self, expected: int) -> tuple[str | None, int]:
        """``(what is wrong or None, dimension)``: reads the arrays' headers and counts the
        documents' lines, so a damaged shard is found before any index work."""
        if self.count != expected:
            return f"its record says {self.count} documents, the chunk holds {expected}", 0
        dims = set()
        for pooling in self.poolings:
            problem, dim = _npy_problem(self.path(f"{pooling}.npy"), self.count, self.precision)
            if problem is not None:
                return problem, 0
            dims.add(dim)
        if len(dims) > 1:
            return f"its poolings have different dimensions ({sorted(dims)})", 0
        return _jsonl_problem(self.path("docs.jsonl"), self.count), dims.pop()

    def damaged(self, problem: str) -> str:
        """The one-line refusal of this shard, saying how to encode it again."""
        label = self.record.get("slice", "0/1")
        again = "" if label == "0/1" else f" --shard {label}"
        return (
            f"shard {self.chunk:06d} of the embedding store {self.folder.parent} is damaged "
            f"({problem}): rerun `retriever encode{again}` into this store, which encodes "
            "that chunk again, or pass --restart to encode the store afresh"
        )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _npy_problem(path: Path, rows: int, precision: str) -> tuple[str | None, int]:
    """What is wrong with a shard's ``.npy`` file (None: an ``(rows, d)`` array of
    ``precision`` whose bytes are all there), and its ``d``. Reads only the header."""
    fmt = np.lib.format
    try:
        with path.open("rb") as handle:
            version = fmt.read_magic(handle)
            read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, fortran, dtype = read(handle)
            offset, size = handle.tell(), os.fstat(handle.fileno()).st_size
    except FileNotFoundError:
        return f"{path.name} is missing", 0
    except (OSError, ValueError, TypeError, SyntaxError) as exc:
        return f"{path.name} is not a readable array ({_first_line(exc)})", 0
    wrong_shape = len(shape) != 2 or shape[0] != rows or not shape[1]
    if dtype != np.dtype(precision) or fortran or wrong_shape:
        order = " (Fortran order)" if fortran else ""
        return f"{path.name} holds {dtype} {shape}{order}, not ({rows}, d) {precision}", 0
    expected = offset + shape[0] * shape[1] * dtype.itemsize
    if size != expected:
        return f"{path.name} is {size:,} bytes, its header says {expected:,}", 0
    return None, int(shape[1])


def _jsonl_problem(path: Path, rows: int) -> str | None:
    """What is wrong with a shard's documents file: every document is one line (each line
    is parsed when read; counting them here finds a truncated file at once)."""
    try:
        with path.open("rb") as handle:
            lines, last = 0, b""
            while block := handle.read(1 << 20):
                lines, last = lines + block.count(b"\n"), block[-1:]
    except FileNotFoundError:
        return f"{path.name} is missing"
    except OSError as exc:
        return f"{path.name} cannot be read ({exc.strerror})"
    if lines != rows or last != b"\n":
        ending = "" if last == b"\n" else ", the last one cut short"
        return f"{path.name} holds {lines} complete lines{ending}, not {rows} documents"
    return None


class EmbeddingStore:
    """A folder of embedding shards with one encoding key; see the module docstring."""

    def __init__(self, folder: Path, key: dict[str, Any]) -> None:
        self.folder = folder
        self.key = key
        self.digest = key_digest(key)
        # The dimension of every shard inspected (or written) by this object: each shard's
        # files are read once, however often shards() is asked.
        self._dims: dict[int, int] = {}

    @classmethod
    def open_or_create(
        cls,
        folder: str | Path,
        key: dict[str, Any],
        *,
        restart: bool = False,
        fixed_chunk_size: bool = True,
    ) -> EmbeddingStore:
        """Open the store at ``folder`` for ``key``, creating it if it is new.

        A store that does not hold what ``key`` asks for is refused (``restart=True``
        empties it first). A store's own chunk size wins over ``key``'s unless
        ``fixed_chunk_size`` (the user chose one): then a different one is refused. Several
        processes may open one store at once (the first to create it wins).
        """
        folder = Path(folder).expanduser().resolve()
        if folder.exists() and not folder.is_dir():
            raise RetrieverError(f"{folder} exists and is not an embedding store folder")
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / STORE_FILE
        if restart and path.exists():
            _empty_store(folder)
        if not path.exists():
            if key["chunk_size"] is None:
                raise ValueError("a new store needs a chunk size")
            _check_no_foreign_files(folder)
            _create_exclusive(path, json.dumps(key, indent=2) + "\n")
        (folder / SHARDS_DIR).mkdir(exist_ok=True)
        held = read_store_key(folder)
        if not covers(held, key):
            raise RetrieverError(
                f"the embedding store {folder} holds another encoding "
                f"({describe_difference(held, key)}); pass --restart to encode afresh into "
                "it, or choose another store"
            )
        chunk_size = key["chunk_size"]
        if fixed_chunk_size and chunk_size is not None and held["chunk_size"] != chunk_size:
            raise RetrieverError(
                f"the embedding store {folder} holds chunks of {held['chunk_size']} documents, "
                f"not the {chunk_size} of --chunk-size: drop --chunk-size to use its shards, "
                "or pass --restart to encode afresh"
            )
        return cls(folder, held)

    @classmethod
    def open(cls, folder: str | Path) -> EmbeddingStore:
        """Open an existing store for reading."""
        folder = Path(folder).expanduser().resolve()
        return cls(folder, read_store_key(folder))

    @property
    def count(self) -> int:
        return int(self.key["source"]["count"])

    @property
    def chunk_size(self) -> int:
        return int(self.key["chunk_size"])

    @property
    def poolings(self) -> tuple[str, ...]:
        return tuple(self.key["poolings"])

    @property
    def precision(self) -> str:
        return key_precision(self.key)

    @property
    def num_chunks(self) -> int:
        return -(-self.count // self.chunk_size)

    @property
    def shards_folder(self) -> Path:
        return self.folder / SHARDS_DIR

    def describe_source(self, scan: CorpusScan) -> None:
        """Note where the documents came from (not part of the key: a copy of the corpus
        elsewhere encodes to the same store)."""
        note = {
            "source": str(scan.source),
            "limit": scan.limit,
            "skipped_empty": len(scan.skipped_empty),
            "skipped_empty_ids": scan.skipped_empty[:100],
        }
        _atomic_write(self.folder / SOURCE_FILE, lambda s: s.write(json.dumps(note).encode()))

    @property
    def source_note(self) -> dict[str, Any]:
        try:
            return json.loads((self.folder / SOURCE_FILE).read_text())
        except (OSError, ValueError):
            return {}

    def shard(self, chunk: int) -> Shard | None:
        """Chunk ``chunk``'s shard if it is complete and of this store's encoding."""
        path = self.shards_folder / f"{chunk:06d}.json"
        try:
            record = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise RetrieverError(
                f"cannot read the shard record {path}: {exc}; delete it and rerun "
                "`retriever encode` into this store to encode that chunk again"
            ) from None
        if not isinstance(record, dict) or not isinstance(record.get("count"), int):
            raise RetrieverError(
                f"the shard record {path} is damaged; delete it and rerun `retriever encode` "
                "into this store to encode that chunk again"
            )
        if record.get("key_sha256") != self.digest:
            raise RetrieverError(
                f"shard {path.name} of {self.folder} was encoded with other settings than the "
                "store's: the store was mixed from different encodings; re-encode that slice "
                "(or pass --restart)"
            )
        return Shard(chunk, record, self.shards_folder, self.poolings, self.precision)

    def expected_count(self, chunk: int) -> int:
        """The documents chunk ``chunk`` holds: ``chunk_size``, fewer in the last one."""
        return min(self.chunk_size, self.count - chunk * self.chunk_size)

    def missing_chunks(self) -> list[int]:
        return [c for c in range(self.num_chunks) if self.shard(c) is None]

    def done_count(self, chunks: Iterable[int]) -> int:
        return sum(shard.count for c in chunks if (shard := self.shard(c)) is not None)

    def write_shard(
        self,
        chunk: int,
        documents: list[Document],
        embeddings: dict[str, np.ndarray],
        *,
        slice_label: str,
    ) -> Shard:
        """Write one chunk's files, the record last, each by an atomic rename; the vectors
        of every pooling the store keeps, in its precision."""
        expected = self.expected_count(chunk)
        if len(documents) != expected:
            raise RetrieverError(
                f"chunk {chunk} of {self.folder} should hold {expected} documents, got "
                f"{len(documents)}: the corpus changed since it was scanned"
            )
        stem = self.shards_folder / f"{chunk:06d}"
        for pooling in self.poolings:
            vectors = self._stored(embeddings[pooling], chunk)
            _atomic_write(
                Path(f"{stem}.{pooling}.npy"),
                lambda stream, v=vectors: np.save(stream, v, allow_pickle=False),
            )
        _atomic_write(
            Path(f"{stem}.docs.jsonl"),
            lambda stream: stream.writelines(
                (
                    json.dumps(
                        {"_id": d.id, "title": d.title, "text": d.text, "metadata": d.metadata},
                        ensure_ascii=False,
                    )
                    + "\n"
                ).encode("utf-8")
                for d in documents
            ),
        )
        record = {
            "chunk": chunk,
            "count": len(documents),
            "first": chunk * self.chunk_size,
            "slice": slice_label,
            "key_sha256": self.digest,
        }
        _atomic_write(
            Path(f"{stem}.json"), lambda stream: stream.write(json.dumps(record).encode())
        )
        self._dims[chunk] = int(np.shape(embeddings[self.poolings[0]])[1])
        return Shard(chunk, record, self.shards_folder, self.poolings, self.precision)

    def _stored(self, vectors: np.ndarray, chunk: int) -> np.ndarray:
        """``vectors`` in the store's precision; refuses values float16 cannot hold (an
        overflow would store infinities and wreck every search)."""
        if self.precision == "float32":
            return np.asarray(vectors, dtype=np.float32)
        largest = float(np.max(np.abs(vectors), initial=0.0))
        if not largest <= _FLOAT16_MAX:
            raise RetrieverError(
                f"chunk {chunk} of {self.folder} has embedding values up to {largest:.3g}, "
                "beyond float16's range: encode into a float32 store (--store-precision "
                "float32)"
            )
        return np.asarray(vectors, dtype=np.float16)

    def shards(self) -> list[Shard]:
        """Every shard in chunk order; refuses a store that is not complete, or one with a
        damaged shard (each shard's files are checked, cheaply, before they are used)."""
        missing = self.missing_chunks()
        if missing:
            raise RetrieverError(self._missing_message(missing))
        shards = [self.shard(c) for c in range(self.num_chunks)]
        for shard in shards:
            if shard.chunk in self._dims:
                continue
            problem, dim = shard.inspect(self.expected_count(shard.chunk))
            if problem is not None:
                raise RetrieverError(shard.damaged(problem))
            self._dims[shard.chunk] = dim
        self._check_dimensions(shards)
        return shards

    def _check_dimensions(self, shards: list[Shard]) -> None:
        """Every shard holds vectors of one dimension; the odd one out is the damaged one."""
        dims = [self._dims[shard.chunk] for shard in shards]
        if not dims:
            return
        common = Counter(dims).most_common(1)[0][0]
        for shard, dim in zip(shards, dims, strict=True):
            if dim != common:
                problem = f"its vectors have {dim} dimensions, the other shards' {common}"
                raise RetrieverError(shard.damaged(problem))

    def drop_damaged(self, chunks: Iterable[int], dim: int | None = None) -> list[int]:
        """Remove the record of every damaged shard among ``chunks`` (files that do not
        match it, or vectors not of dimension ``dim``), so that encoding writes it again;
        returns their chunk numbers. Only for a writer that is about to encode them."""
        dropped = []
        for chunk in chunks:
            shard = self.shard(chunk)
            if shard is None or chunk in self._dims:
                continue
            problem, found = shard.inspect(self.expected_count(chunk))
            if problem is None and dim is not None and found != dim:
                problem = f"its vectors have {found} dimensions, the model's {dim}"
            if problem is None:
                self._dims[chunk] = found
                continue
            logger.warning("%s is damaged (%s): encoding it again", shard.path("json"), problem)
            shard.path("json").unlink(missing_ok=True)
            dropped.append(chunk)
        return dropped

    def _missing_message(self, missing: list[int]) -> str:
        slices = sorted(
            {
                shard.record["slice"]
                for c in range(self.num_chunks)
                if (shard := self.shard(c)) is not None
            }
        )
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        hint = ""
        totals = {label.split("/")[1] for label in slices}
        if len(totals) == 1:
            total = int(totals.pop())
            needed = sorted({c % total for c in missing})
            hint = (
                " (run `retriever encode` with "
                + ", ".join(f"--shard {i}/{total}" for i in needed)
                + ")"
            )
        return (
            f"the embedding store {self.folder} is incomplete: {len(missing)} of "
            f"{self.num_chunks} chunks are missing ({shown}){hint}"
        )

    def read(self, pooling: str) -> np.ndarray:
        """Every embedding of one pooling as one ``(N, d)`` float32 array (small
        collections)."""
        return np.concatenate(
            [np.asarray(s.embeddings(pooling), dtype=np.float32) for s in self.shards()]
        )


def read_store_key(folder: Path) -> dict[str, Any]:
    path = folder / STORE_FILE
    if not path.is_file():
        raise RetrieverError(
            f"{folder} is not an embedding store (no {STORE_FILE}); make one with "
            "`retriever encode DATASET --out STORE`"
        )
    try:
        key = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RetrieverError(f"cannot read {path}: {exc}") from None
    if not isinstance(key, dict) or key.get("format") != STORE_FORMAT:
        raise RetrieverError(f"{path} is not an embedding store description")
    if key.get("version") not in READABLE_VERSIONS:
        raise RetrieverError(
            f"{folder} is an embedding store of version {key.get('version')}; this retriever "
            f"reads versions {', '.join(map(str, READABLE_VERSIONS))}: encode it again"
        )
    return key


def _check_no_foreign_files(folder: Path) -> None:
    """A new store goes into an empty folder, or one with only a store's own files (several
    slices may create one store at once and tolerate each other's; indexes.json outlives a
    --restart, which empties the store's key and shards)."""
    foreign = [p.name for p in folder.iterdir() if not _owned_name(p.name)]
    if foreign and not (folder / STORE_FILE).exists():
        raise RetrieverError(
            f"{folder} is not empty and holds no {STORE_FILE}: choose another store folder"
        )


# A shard's files (``000012.json``, ``000012.mean.npy``, ``000012.docs.jsonl``) and the
# staging names they are written under first.
_SHARD_FILE = re.compile(r"^\.?\d{6}\.[\w.]+$")


_OWNED = (STORE_FILE, SOURCE_FILE, INDEXES_FILE, SHARDS_DIR)


def _owned_name(name: str) -> bool:
    """Whether a store writes this name at its top level: its files and shards folder,
    and the staging names (``.store.json.1234``) they are written under first."""
    return name in _OWNED or name.startswith(tuple(f".{owned}." for owned in _OWNED))


def store_files(folder: Path) -> list[Path]:
    """The files and folders under ``folder`` that a store writes (what removing it may
    delete); anything else found there is someone else's."""
    found = [p for p in folder.iterdir() if p.name != SHARDS_DIR and _owned_name(p.name)]
    shards = folder / SHARDS_DIR
    if shards.is_dir():
        found += [path for path in shards.iterdir() if _SHARD_FILE.match(path.name)]
    return sorted(found)


def _empty_store(folder: Path) -> None:
    import shutil

    logger.info("--restart: emptying the embedding store %s", folder)
    shutil.rmtree(folder / SHARDS_DIR, ignore_errors=True)
    (folder / STORE_FILE).unlink(missing_ok=True)


def _create_exclusive(path: Path, text: str) -> None:
    """Create ``path`` with ``text`` unless another process already did."""
    staging = path.with_name(f".{path.name}.{os.getpid()}")
    staging.write_text(text)
    try:
        os.link(staging, path)
    except FileExistsError:
        pass
    finally:
        staging.unlink()


def _atomic_write(path: Path, write: Any) -> None:
    staging = path.with_name(f".{path.name}.{os.getpid()}.partial")
    with staging.open("wb") as stream:
        write(stream)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(staging, path)


def parse_slice(text: str) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)`` with ``0 <= I < N``."""
    try:
        index, total = (int(part) for part in text.split("/"))
    except ValueError:
        raise RetrieverError(f"--shard takes I/N (e.g. 0/4), got {text!r}") from None
    if not 0 <= index < total:
        raise RetrieverError(f"--shard I/N needs 0 <= I < N, got {text!r}")
    return index, total


def chunked_documents(
    documents: Iterable[Document], chunk_size: int
) -> Iterator[tuple[int, list[Document]]]:
    """``(chunk number, documents)`` in order; only one chunk is in memory at a time."""
    chunk: list[Document] = []
    number = 0
    for document in documents:
        chunk.append(document)
        if len(chunk) == chunk_size:
            yield number, chunk
            number, chunk = number + 1, []
    if chunk:
        yield number, chunk


def stores_root() -> Path:
    """The folder of the stores named by their encoding key (in the cache)."""
    return cache_dir() / "embeddings"


def cached_store_folder(key: dict[str, Any]) -> Path:
    """Where a new store of ``key`` goes in the cache: named by its key without the chunk
    size, which the store's creator chooses (so every process finds the same folder)."""
    return stores_root() / key_digest({**key, "chunk_size": None})[:24]


def find_cached_store(key: dict[str, Any]) -> Path:
    """The cache folder for ``key``: an existing store that holds what it asks for (one of
    exactly its poolings, else one of every pooling, else one of version 1, which was
    named by its whole key), or else the folder of a new store."""
    candidates = [cached_store_folder(key)]
    if key["poolings"] != list(POOLINGS):
        candidates.append(cached_store_folder({**key, "poolings": list(POOLINGS)}))
    if key_precision(key) == "float32":
        first = {k: v for k, v in key.items() if k != "precision"}
        first.update(version=1, poolings=list(POOLINGS), chunk_size=DEFAULT_CHUNK_SIZE)
        candidates.append(stores_root() / key_digest(first)[:24])
    for folder in candidates:
        try:
            if (folder / STORE_FILE).is_file() and covers(read_store_key(folder), key):
                return folder
        except RetrieverError:
            continue  # a damaged store is not a candidate; a new one goes beside it
    return candidates[0]


def held_key(folder: Path) -> dict[str, Any] | None:
    """The key of the store at ``folder``, or None where there is none yet."""
    return read_store_key(folder) if (Path(folder) / STORE_FILE).is_file() else None


# --- Which indexes use a store; listing and removing stores ----------------------------------


def record_index(folder: Path, index: Path) -> None:
    """Add ``index`` to the indexes built from the store at ``folder`` (``indexes.json``).

    Builds from one store may finish at once: each rereads the file under a lock, merges
    its path in and replaces the file atomically, so no build's note is lost and a reader
    never sees half a file.
    """
    import fcntl

    path = folder / INDEXES_FILE
    with (folder / f".{INDEXES_FILE}.lock").open("a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        # Paths gone since (a benchmark builds and removes hundreds) are dropped here, so
        # the note stays as long as the indexes that exist.
        recorded = recorded_indexes(path)
        held = {i for i in recorded if Path(i).exists()} | {str(index)}
        if held == set(recorded):
            return
        text = json.dumps({"indexes": sorted(held)}, indent=2) + "\n"
        staging = path.with_name(f".{INDEXES_FILE}.{os.getpid()}.partial")
        staging.write_text(text, encoding="utf-8")
        os.replace(staging, path)


def recorded_indexes(path: Path) -> list[str]:
    """The index paths ``indexes.json`` holds ([] when absent or unreadable: only a note)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    indexes = data.get("indexes") if isinstance(data, dict) else None
    return [i for i in indexes if isinstance(i, str)] if isinstance(indexes, list) else []


def store_folders(root: Path) -> list[Path]:
    """The stores directly under ``root`` (folders holding a store.json), by name."""
    root = Path(root).expanduser()
    if not root.is_dir():
        return []
    return sorted(p.resolve() for p in root.iterdir() if (p / STORE_FILE).is_file())


def find_store(name: str, root: Path | None = None) -> Path:
    """The store ``name`` names: a folder path, or a unique prefix of a folder name under
    ``root``; refuses an unknown or ambiguous name, or a folder that is not a store."""
    root = stores_root() if root is None else Path(root).expanduser()
    path = Path(name).expanduser()
    if path.is_dir():
        read_store_key(path)  # refuses a folder that is not a store
        return path.resolve()
    folders = store_folders(root)
    # A whole name is never ambiguous, even when it begins another (s1 and s10).
    matches = [folder for folder in folders if folder.name == name] or [
        folder for folder in folders if folder.name.startswith(name)
    ]
    if not matches:
        raise RetrieverError(f"no embedding store named {name!r} under {root}")
    if len(matches) > 1:
        shown = ", ".join(folder.name for folder in matches[:5])
        more = " ..." if len(matches) > 5 else ""
        raise RetrieverError(
            f"{name!r} names {len(matches)} stores under {root} ({shown}{more}): give more of "
            "the name"
        )
    return matches[0]
