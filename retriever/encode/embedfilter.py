"""EmbedFilter: a fixed projection onto a band of the unembedding matrix's right singular vectors.

Data-free: only the model's unembedding matrix ``W`` (``V x d``) is needed. Its right
singular vectors, sorted by decreasing singular value, span directions from the
frequent-token ones (top) to the "dark" tail (bottom); the default ``edge`` band keeps a
contiguous middle block and drops the same number from each end. See ``docs/method.md``.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from retriever.core.errors import RetrieverError
from retriever.core.spec import FilterSpec

MATRIX_FILE = "filter.npy"
CENTRE_FILE = "filter_centre.npy"
SPEC_FILE = "filter.json"


def right_singular_vectors(unembedding: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(Vh, sigma)`` of ``W = U S Vh``, largest singular value first.

    Computed as the eigenvectors of the ``d x d`` Gram matrix ``W^T W`` in float64, which
    equals the SVD's ``Vh`` up to the sign of each row; signs are fixed so that each
    row's largest-magnitude entry is positive, making the filter reproducible.
    """
    w = np.asarray(unembedding, dtype=np.float64)
    if w.ndim != 2 or w.shape[0] < w.shape[1]:
        raise ValueError(f"expected a V x d unembedding matrix with V >= d, got {w.shape}")
    eigenvalues, eigenvectors = np.linalg.eigh(w.T @ w)
    order = np.argsort(eigenvalues)[::-1]
    vh = eigenvectors[:, order].T
    pivots = np.abs(vh).argmax(axis=1)
    vh *= np.sign(vh[np.arange(len(vh)), pivots])[:, None]
    return vh, np.sqrt(np.clip(eigenvalues[order], 0.0, None))


def band_rows(spec: FilterSpec, model_dim: int) -> np.ndarray:
    """Indices of the rows of ``Vh`` (0 = largest singular value) that the filter keeps."""
    k = spec.kept_dims(model_dim)
    if spec.start is not None:
        if spec.start + k > model_dim:
            raise RetrieverError(
                f"--start {spec.start} with {k} kept dimensions runs past the model's "
                f"{model_dim}; the largest start for that size is {model_dim - k}"
            )
        start = spec.start
    elif spec.band == "rand":
        return np.sort(np.random.default_rng(spec.seed).choice(model_dim, size=k, replace=False))
    elif spec.band == "edge":
        start = (model_dim - k) // 2
    elif spec.band == "tail":  # keeps the top k: drops the small-sigma end
        start = 0
    else:  # "head" keeps the bottom k: drops the large-sigma end
        start = model_dim - k
    return np.arange(start, start + k)


class UnembeddingSpectrum:
    """What EmbedFilter needs of an unembedding matrix, computed once and shared.

    The singular vectors are computed on first use, so the identity filter (tau 1) never
    pays for them, and a benchmark building many filters pays once.
    """

    def __init__(self, unembedding: np.ndarray) -> None:
        self.unembedding = np.asarray(unembedding)
        self.model_dim = int(self.unembedding.shape[1])
        self.mean_row = self.unembedding.astype(np.float64).mean(axis=0)

    @cached_property
    def right_singular_vectors(self) -> np.ndarray:
        return right_singular_vectors(self.unembedding)[0]


def without_mean_direction(matrix: np.ndarray, mean_row: np.ndarray) -> np.ndarray:
    """``(I - u u^T) F`` with ``u`` the unit vector of ``F . mean(W rows)``.

    Filtered embeddings still share one strong common direction, the mean unembedding
    row seen through the filter; this removes it from every vector alike, using nothing
    but the model's weights.
    """
    direction = matrix @ mean_row
    direction /= np.linalg.norm(direction)
    return matrix - np.outer(direction, direction @ matrix)


# The names a band filter takes from its spec (EmbedFilter.name).
_BAND_FILTER_NAMES = ("unfiltered", "embedfilter", "embedfilter-nomean")


class EmbedFilter:
    """A ``k x d`` matrix ``F``; ``transform(h)`` is ``F h``, L2-normalised.

    The rows of a band filter are orthonormal; with ``remove_mean_direction`` the matrix
    is ``(I - u u^T) F``, which has rank ``k - 1``. A projection fitted on documents (the
    baselines of :mod:`retriever.encode.baselines`) also has a ``centre`` ``c``
    (``transform(h)`` is ``F (h - c)``; subtracting before projecting keeps float32
    precision when ``c`` dominates ``h``, as the mean of LLM embeddings does) and its own
    ``name``; its ``rows`` are the axes of its own basis that it keeps. Every projection
    an index stores is one of these, so the searcher applies any of them the same way.
    """

    def __init__(
        self,
        matrix: np.ndarray,
        spec: FilterSpec,
        rows: np.ndarray,
        *,
        centre: np.ndarray | None = None,
        name: str | None = None,
    ) -> None:
        self.matrix = np.ascontiguousarray(matrix, dtype=np.float32)
        self.spec = spec
        self.rows = np.asarray(rows, dtype=np.int64)
        self.centre = None if centre is None else np.asarray(centre, dtype=np.float32)
        self._name = name
        if self.matrix.shape != (len(self.rows), self.matrix.shape[1]):
            raise ValueError(f"filter matrix {self.matrix.shape} does not match {len(rows)} rows")
        if self.centre is not None and self.centre.shape != (self.matrix.shape[1],):
            raise ValueError(
                f"filter centre {self.centre.shape} does not match {self.matrix.shape}"
            )

    @classmethod
    def from_unembedding(
        cls, unembedding: np.ndarray | UnembeddingSpectrum, spec: FilterSpec
    ) -> EmbedFilter:
        """Build the filter of ``spec`` from a ``V x d`` unembedding matrix (or its spectrum)."""
        spectrum = (
            unembedding
            if isinstance(unembedding, UnembeddingSpectrum)
            else UnembeddingSpectrum(unembedding)
        )
        rows = band_rows(spec, spectrum.model_dim)
        if len(rows) == spectrum.model_dim:
            # Every direction kept: the identity, i.e. the unfiltered baseline (a rotation
            # by Vh would give the same dot products, only less exactly).
            matrix = np.eye(spectrum.model_dim)
        else:
            matrix = spectrum.right_singular_vectors[rows]
        if spec.remove_mean_direction:
            matrix = without_mean_direction(matrix, spectrum.mean_row)
        return cls(matrix, spec, rows)

    @property
    def dim(self) -> int:
        """Output dimension k."""
        return int(self.matrix.shape[0])

    @property
    def model_dim(self) -> int:
        """Input dimension d (the model's hidden size)."""
        return int(self.matrix.shape[1])

    @property
    def name(self) -> str:
        """``unfiltered``, ``embedfilter`` (the paper's) or ``embedfilter-nomean`` (the
        default: mean direction removed); a fitted projection's own name (``pca``, ...)."""
        if self._name is not None:
            return self._name
        if self.is_identity:
            return "unfiltered"
        return "embedfilter-nomean" if self.spec.remove_mean_direction else "embedfilter"

    @property
    def is_identity(self) -> bool:
        return (
            self._name is None
            and self.centre is None
            and self.dim == self.model_dim
            and not self.spec.remove_mean_direction
        )

    def transform(self, embeddings: np.ndarray, *, normalize: bool = True) -> np.ndarray:
        """Project ``(n, d)`` pooled embeddings to ``(n, k)``, L2-normalised by default."""
        embeddings = np.asarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 2 or embeddings.shape[1] != self.model_dim:
            raise ValueError(
                f"expected embeddings of shape (n, {self.model_dim}), got {embeddings.shape}"
            )
        if self.centre is not None:
            embeddings = embeddings - self.centre
        projected = embeddings @ self.matrix.T
        if normalize:
            norms = np.linalg.norm(projected, axis=1, keepdims=True)
            projected /= np.maximum(norms, np.finfo(np.float32).tiny)
        return projected

    def describe(self) -> dict[str, Any]:
        rows = self.rows.tolist()
        contiguous = rows == list(range(rows[0], rows[0] + len(rows)))
        return {
            "name": self.name,
            "spec": self.spec.to_dict(),
            "model_dim": self.model_dim,
            "dim": self.dim,
            "rows": [rows[0], rows[-1] + 1] if contiguous else rows,
            "rows_are_range": contiguous,
            "centre": self.centre is not None,
        }

    def save(self, folder: str | Path) -> None:
        """Write ``filter.npy`` (the matrix) and ``filter.json`` (spec and rows)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / MATRIX_FILE, self.matrix, allow_pickle=False)
        if self.centre is not None:
            np.save(folder / CENTRE_FILE, self.centre, allow_pickle=False)
        (folder / SPEC_FILE).write_text(json.dumps(self.describe(), indent=2) + "\n")

    @classmethod
    def load(cls, folder: str | Path) -> EmbedFilter:
        """Read a filter written by :meth:`save`, every part checked against ``filter.json``.

        A damaged part is refused in one :class:`RetrieverError` here, before the model
        loads, rather than as numpy's error in the middle of a search.
        """
        folder = Path(folder)
        info, spec, rows = _read_description(folder)
        model_dim = info.get("model_dim")
        matrix = _read_array(folder / MATRIX_FILE, (len(rows), model_dim))
        centre = None
        if info.get("centre"):
            centre = _read_array(folder / CENTRE_FILE, (matrix.shape[1],))
        # A band filter's name follows from its spec; any other is a fitted projection's.
        name = info.get("name", "unfiltered")
        fitted = None if name in _BAND_FILTER_NAMES else str(name)
        return cls(matrix, spec, rows, centre=centre, name=fitted)


def _damaged(path: Path, detail: str) -> RetrieverError:
    detail = " ".join(detail.split())  # one line, whatever numpy or json said
    if len(detail) > 200:
        detail = detail[:200] + "..."
    return RetrieverError(f"{path} is damaged ({detail}); rebuild the index")


def _read_description(folder: Path) -> tuple[dict[str, Any], FilterSpec, np.ndarray]:
    """``filter.json``: the description, spec and kept rows the arrays are checked against."""
    path = folder / SPEC_FILE
    try:
        info = json.loads(path.read_text())
    except OSError as exc:
        raise RetrieverError(f"cannot read the filter in {folder}: {exc}") from None
    except ValueError as exc:  # invalid JSON or UTF-8
        raise _damaged(path, str(exc)) from None
    try:
        if not isinstance(info, dict):
            raise TypeError(f"a JSON {type(info).__name__}, not an object")
        rows, model_dim = info["rows"], int(info["model_dim"])
        if info["rows_are_range"]:
            rows = list(range(max(rows[0], -1), min(rows[1], model_dim + 1)))
        rows = np.asarray(rows, dtype=np.int64)
        if rows.ndim != 1 or not len(rows):
            raise ValueError(f"'rows' should be a non-empty list, it has shape {rows.shape}")
        _check_rows(info["rows"], rows, model_dim)
        spec = FilterSpec.from_dict(info["spec"])
    except KeyError as exc:
        raise _damaged(path, f"{exc} is missing") from None
    except (ValueError, TypeError, IndexError, OverflowError, RetrieverError) as exc:
        raise _damaged(path, str(exc)) from None
    return info, spec, rows


def _check_rows(written: Any, rows: np.ndarray, model_dim: int) -> None:
    """The kept rows are distinct rows of the model's ``model_dim`` singular directions."""
    inside = rows.min() >= 0 and rows.max() < model_dim
    if not inside or len(np.unique(rows)) != len(rows):
        raise ValueError(
            f"'rows' {written} are not distinct rows between 0 and {model_dim - 1}"
            " (the model's hidden size)"
        )


def _read_array(path: Path, shape: tuple[int | None, ...]) -> np.ndarray:
    """A finite float array of ``shape`` (``None``: any size) from a ``.npy`` file."""
    try:
        array = np.load(path, allow_pickle=False)  # never unpickles: a crafted file cannot run
    except FileNotFoundError:
        raise RetrieverError(f"{path} is missing; rebuild the index") from None
    except OSError as exc:
        raise RetrieverError(f"cannot read {path}: {exc}") from None
    except (ValueError, EOFError) as exc:  # truncated, garbage, or a pickle
        raise _damaged(path, str(exc) or type(exc).__name__) from None
    if not isinstance(array, np.ndarray):  # a .npz archive under the .npy name
        array.close()
        raise _damaged(path, "a .npz archive, not one array")
    fits = array.ndim == len(shape) and all(
        want is None or got == want for got, want in zip(array.shape, shape, strict=True)
    )
    if not fits or not np.issubdtype(array.dtype, np.floating):
        wanted = "x".join("?" if n is None else str(n) for n in shape)
        found = "x".join(map(str, array.shape)) or "scalar"
        raise _damaged(path, f"a {found} {array.dtype} array, {SPEC_FILE} says {wanted} floats")
    if not np.isfinite(array).all():
        raise _damaged(path, "it holds NaN or infinite values")
    return array
