"""Key-token sparse index: every document as its top-K aligned tokens (Nie et al. 2024).

A document keeps the weights ``e_t . x`` of its ``K`` best-aligned tokens ``t`` (``x`` is
its vector in the lens space: the index's filtered vector, or the raw unit embedding). A
query is the set of its own tokens plus its ``M`` best-aligned ones; its score for a
document is the sum of the document's weights of those tokens. The index is stored
term-major (a ``V x N`` scipy CSR matrix: one posting list per token), so a batch of
queries is scored by one sparse product.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from zipfile import BadZipFile

import numpy as np
import scipy.sparse as sp

from retriever.core.errors import RetrieverError
from retriever.core.progress import progress_bar
from retriever.core.spec import SparseSpec
from retriever.encode.lens import TokenLens

SPARSE_DIR = "sparse"
POSTINGS_FILE = "postings.npz"
KEYS_FILE = "keys.npy"
SPEC_FILE = "sparse.json"
# Documents scored per block while building, and queries per sparse product.
_BUILD_BLOCK = 1024
_QUERY_BLOCK = 256


class KeyTokenIndex:
    """Posting lists ``token -> (columns, weights)`` as a ``V x N`` CSR matrix, and the
    document key of every column."""

    def __init__(self, postings: sp.csr_matrix, spec: SparseSpec, keys: np.ndarray) -> None:
        self.postings = postings.tocsr()
        self.spec = spec
        self.keys = np.asarray(keys, dtype=np.int64)
        if len(self.keys) != self.postings.shape[1]:
            raise RetrieverError(
                f"the sparse index has {self.postings.shape[1]} documents but "
                f"{len(self.keys)} keys; rebuild the index"
            )

    @classmethod
    def build(
        cls,
        lens: TokenLens,
        vectors: np.ndarray,
        spec: SparseSpec | None = None,
        *,
        keys: np.ndarray | None = None,
        show_progress: bool = True,
    ) -> KeyTokenIndex:
        """Index documents held in memory from their vectors in ``spec.space`` (see
        ``TokenLens.vectors``); keys ``0..n-1`` unless given."""
        import tempfile

        spec = spec or SparseSpec()
        keys = np.arange(len(vectors)) if keys is None else np.asarray(keys)
        with tempfile.TemporaryDirectory(prefix="retriever-sparse-") as scratch:
            builder = KeyTokenIndexBuilder(lens, spec, Path(scratch))
            blocks = range(0, len(vectors), _BUILD_BLOCK * 8)
            for lo in progress_bar(blocks, desc="key tokens", unit="block", show=show_progress):
                hi = lo + _BUILD_BLOCK * 8
                builder.add(keys[lo:hi], vectors[lo:hi])
            return builder.finish()

    def with_added(self, other: KeyTokenIndex) -> KeyTokenIndex:
        """This index with ``other``'s documents appended (same vocabulary and spec)."""
        postings = sp.hstack([self.postings, other.postings], format="csr")
        return KeyTokenIndex(postings, self.spec, np.concatenate([self.keys, other.keys]))

    def without_keys(self, keys: np.ndarray) -> KeyTokenIndex:
        """This index without the documents ``keys`` (their columns dropped)."""
        keep = ~np.isin(self.keys, keys)
        if keep.all():
            return self
        return KeyTokenIndex(self.postings[:, np.flatnonzero(keep)], self.spec, self.keys[keep])

    @property
    def num_documents(self) -> int:
        return int(self.postings.shape[1])

    @property
    def vocabulary_size(self) -> int:
        return int(self.postings.shape[0])

    def query_matrix(
        self,
        lens: TokenLens,
        vectors: np.ndarray,
        own_token_ids: Sequence[Sequence[int]],
        query_tokens: int | None = None,
    ) -> sp.csr_matrix:
        """Binary ``(n, V)`` rows: each query's own tokens plus its top-M aligned tokens."""
        m = self.spec.query_tokens if query_tokens is None else query_tokens
        if m < 0:
            raise RetrieverError(f"the number of aligned query tokens must be >= 0, got {m}")
        aligned = lens.top_ids(vectors, self.spec.space, m)[0] if m else None
        rows, columns = [], []
        for row, own in enumerate(own_token_ids):
            tokens = set(own) if aligned is None else set(own).union(aligned[row].tolist())
            tokens = sorted(t for t in tokens if 0 <= t < self.vocabulary_size)
            rows += [row] * len(tokens)
            columns += tokens
        return sp.csr_matrix(
            (np.ones(len(rows), dtype=np.float32), (rows, columns)),
            shape=(len(own_token_ids), self.vocabulary_size),
        )

    def search(self, queries: sp.csr_matrix, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, keys)``, each ``(n, k)``, best first; like FAISS, -1 pads rows that
        match fewer than ``k`` documents (a document sharing no token is not a match)."""
        scores = np.full((queries.shape[0], k), -np.inf, dtype=np.float32)
        rows = np.full((queries.shape[0], k), -1, dtype=np.int64)
        for lo in range(0, queries.shape[0], _QUERY_BLOCK):
            product = (queries[lo : lo + _QUERY_BLOCK] @ self.postings).tocsr()
            for offset in range(product.shape[0]):
                start, end = product.indptr[offset], product.indptr[offset + 1]
                candidates, values = product.indices[start:end], product.data[start:end]
                take = min(k, len(values))
                if not take:
                    continue
                best = np.argpartition(-values, take - 1)[:take]
                best = best[np.lexsort((candidates[best], -values[best]))]
                scores[lo + offset, :take] = values[best]
                rows[lo + offset, :take] = self.keys[candidates[best]]
        return scores, rows

    @property
    def nbytes(self) -> int:
        """Bytes of the posting lists in memory (weights, document ids, offsets)."""
        postings = self.postings
        return int(
            postings.data.nbytes
            + postings.indices.nbytes
            + postings.indptr.nbytes
            + self.keys.nbytes
        )

    def describe(self) -> dict[str, Any]:
        return {
            "spec": self.spec.to_dict(),
            "documents": self.num_documents,
            "vocabulary": self.vocabulary_size,
            "postings": int(self.postings.nnz),
        }

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        # Uncompressed: loading is a read, not a decompression.
        sp.save_npz(folder / POSTINGS_FILE, self.postings, compressed=False)
        np.save(folder / KEYS_FILE, self.keys, allow_pickle=False)
        (folder / SPEC_FILE).write_text(json.dumps(self.describe(), indent=2) + "\n")
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> KeyTokenIndex:
        """Read an index written by :meth:`save`, each part checked against ``sparse.json``.

        A damaged part is refused in one :class:`RetrieverError` here, before the model
        loads, rather than as scipy's error (or a wrong answer) in the middle of a search.
        """
        folder = Path(folder)
        info, spec = _read_description(folder)
        postings = _read_postings(folder / POSTINGS_FILE)
        keys = _read_keys(folder / KEYS_FILE)
        expected = {
            "vocabulary": postings.shape[0],
            "documents": postings.shape[1],
            "postings": postings.nnz,
        }
        for field, found in expected.items():
            # Absent from descriptions written by older versions: nothing to check then.
            if field in info and info[field] != found:
                raise _damaged(
                    folder / POSTINGS_FILE, f"{found} {field}, {SPEC_FILE} says {info[field]}"
                )
        return cls(postings, spec, keys)


# What numpy, scipy and zipfile raise for a truncated, garbled or crafted file.
_DAMAGE = (
    ValueError,
    KeyError,
    TypeError,
    AttributeError,
    EOFError,
    OverflowError,
    NotImplementedError,
    BadZipFile,
    zlib.error,
)


def _damaged(path: Path, detail: str) -> RetrieverError:
    detail = " ".join(detail.split())  # one line, whatever numpy or zipfile said
    if len(detail) > 200:
        detail = detail[:200] + "..."
    return RetrieverError(f"{path} is damaged ({detail}); rebuild the index")


def _read_description(folder: Path) -> tuple[dict[str, Any], SparseSpec]:
    path = folder / SPEC_FILE
    try:
        info = json.loads(path.read_text())
        if not isinstance(info, dict):
            raise TypeError(f"a JSON {type(info).__name__}, not an object")
        return info, SparseSpec.from_dict(info["spec"])
    except OSError as exc:
        raise RetrieverError(f"cannot read the sparse index in {folder}: {exc}") from None
    except KeyError as exc:
        raise _damaged(path, f"{exc} is missing") from None
    except (ValueError, TypeError, AttributeError, RetrieverError) as exc:
        raise _damaged(path, str(exc)) from None


def _read_postings(path: Path) -> sp.csr_matrix:
    try:
        postings = sp.load_npz(path)  # never unpickles: a crafted file cannot run
    except OSError as exc:
        raise RetrieverError(f"cannot read the sparse index in {path.parent}: {exc}") from None
    except _DAMAGE as exc:
        raise _damaged(path, str(exc) or type(exc).__name__) from None
    if postings.ndim != 2 or not np.issubdtype(postings.dtype, np.floating):
        raise _damaged(path, f"a {postings.dtype} matrix, not float posting weights")
    return postings.tocsr()


def _read_keys(path: Path) -> np.ndarray:
    try:
        keys = np.load(path, allow_pickle=False)
    except OSError as exc:
        raise RetrieverError(f"cannot read the sparse index in {path.parent}: {exc}") from None
    except _DAMAGE as exc:
        raise _damaged(path, str(exc) or type(exc).__name__) from None
    if not isinstance(keys, np.ndarray):  # a .npz archive under the .npy name
        keys.close()
        raise _damaged(path, "a .npz archive, not one array")
    if keys.ndim != 1 or not np.issubdtype(keys.dtype, np.integer):
        raise _damaged(path, f"a {keys.shape} {keys.dtype} array, not one integer key per document")
    return keys


def _check_memory(postings: int) -> None:
    """Refuse a term-major index that will not fit (8 bytes per posting: id and weight)."""
    import psutil

    needed = postings * (np.dtype(np.int32).itemsize + np.dtype(np.float32).itemsize)
    available = psutil.virtual_memory().available
    if needed > available:
        raise RetrieverError(
            f"the key-token index needs {needed / 2**30:.1f} GiB ({postings:,} postings at 8 "
            f"bytes) and {available / 2**30:.1f} GiB is free: lower --sparse-doc-tokens, "
            "build without --sparse, or build on a machine with more memory"
        )


class KeyTokenIndexBuilder:
    """Builds a key-token index chunk by chunk in bounded memory.

    Each chunk's top-K tokens go to a scratch file; :meth:`finish` counts each token's
    postings in one pass, allocates the term-major arrays once (the final index's bytes)
    and fills them in a second pass, so peak memory is the index plus one chunk.
    """

    def __init__(self, lens: TokenLens, spec: SparseSpec, scratch: Path) -> None:
        self.lens = lens
        self.spec = spec
        self.top = min(spec.doc_tokens, lens.vocabulary_size)
        self.scratch = Path(scratch)
        self.scratch.mkdir(parents=True, exist_ok=True)
        self._chunks: list[Path] = []
        self._keys: list[np.ndarray] = []

    def add(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        """Add documents from their vectors in ``spec.space``."""
        ids = np.empty((len(vectors), self.top), dtype=np.int32)
        weights = np.empty((len(vectors), self.top), dtype=np.float32)
        for lo in range(0, len(vectors), _BUILD_BLOCK):
            block_ids, block_weights = self.lens.top_ids(
                vectors[lo : lo + _BUILD_BLOCK], self.spec.space, self.top
            )
            ids[lo : lo + len(block_ids)] = block_ids
            weights[lo : lo + len(block_ids)] = block_weights
        path = self.scratch / f"{len(self._chunks):06d}.npz"
        np.savez(path, ids=ids, weights=weights)
        self._chunks.append(path)
        self._keys.append(np.asarray(keys, dtype=np.int64))

    def finish(self) -> KeyTokenIndex:
        vocabulary = self.lens.vocabulary_size
        counts = np.zeros(vocabulary, dtype=np.int64)
        for path in self._chunks:
            with np.load(path) as chunk:
                counts += np.bincount(chunk["ids"].ravel(), minlength=vocabulary)
        indptr = np.zeros(vocabulary + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        _check_memory(int(indptr[-1]))
        indices = np.empty(int(indptr[-1]), dtype=np.int32)
        data = np.empty(int(indptr[-1]), dtype=np.float32)
        cursor = indptr[:-1].copy()
        column = 0
        for path in self._chunks:
            with np.load(path) as chunk:
                ids, weights = chunk["ids"], chunk["weights"]
            terms = ids.ravel()
            # Stable: within a token, columns stay ascending (documents in key order).
            order = np.argsort(terms, kind="stable")
            ordered = terms[order]
            first = np.searchsorted(ordered, ordered, side="left")
            positions = cursor[ordered] + (np.arange(len(ordered)) - first)
            indices[positions] = column + order // ids.shape[1]
            data[positions] = weights.ravel()[order]
            cursor += np.bincount(terms, minlength=vocabulary)
            column += len(ids)
            path.unlink()
        keys = np.concatenate(self._keys) if self._keys else np.empty(0, dtype=np.int64)
        postings = sp.csr_matrix((data, indices, indptr), shape=(vocabulary, column))
        return KeyTokenIndex(postings, self.spec, keys)
