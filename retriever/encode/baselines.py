"""Fitted dimension-reduction baselines that EmbedFilter is measured against.

Each is fitted on a sample of the corpus being indexed (mu = its mean) and applied
identically to documents and queries, then L2-normalised like the filter:
- ``pca``: ``(h - mu) P_k``, the top-k principal directions;
- ``whiten``: ``(h - mu) U_k Lambda_k^(-1/2)`` (Su et al. 2021);
- ``abtt``: all-but-the-top (Mu & Viswanath 2018): subtract mu, drop the top D
  principal directions (D = d // 100, at least 1) and keep the next k, so that it is
  compared at the same k;
- ``random``: a seeded random orthonormal projection, no fitting.

Each comes out as an :class:`~retriever.encode.embedfilter.EmbedFilter` centred on mu
(``F (h - mu)`` with ``F = diag(scale) P``), so an index stores and a searcher applies it
exactly as it does EmbedFilter itself.
"""

from __future__ import annotations

import numpy as np

from retriever.core.errors import RetrieverError
from retriever.core.spec import FilterSpec
from retriever.encode.embedfilter import EmbedFilter

BASELINES = ("pca", "whiten", "abtt", "random")


def _fitted(
    method: str, mean: np.ndarray, axes: np.ndarray, rows: np.ndarray, scale: np.ndarray
) -> EmbedFilter:
    """``scale * (axes[rows] (h - mean))`` as a filter centred on ``mean``."""
    spec = FilterSpec(dim=len(rows), remove_mean_direction=False)
    matrix = axes[rows] * scale[:, None]
    return EmbedFilter(matrix, spec, rows, centre=mean, name=method)


def _principal_axes(sample: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(mean, eigenvalues, axes)``: covariance eigenpairs, largest first, in float64."""
    data = np.asarray(sample, dtype=np.float64)
    mean = data.mean(axis=0)
    centered = data - mean
    eigenvalues, eigenvectors = np.linalg.eigh(centered.T @ centered / max(len(data) - 1, 1))
    order = np.argsort(eigenvalues)[::-1]
    return mean, np.clip(eigenvalues[order], 0.0, None), eigenvectors[:, order].T


def abtt_dropped(model_dim: int) -> int:
    return max(1, model_dim // 100)


def fit_baseline(method: str, sample: np.ndarray, k: int, *, seed: int = 0) -> EmbedFilter:
    """Fit ``method`` (one of :data:`BASELINES`) on ``sample`` (n, d) to output k dims."""
    d = int(sample.shape[1])
    if not 1 <= k <= d:
        raise RetrieverError(f"a {method} baseline needs 1 <= k <= {d}, got {k}")
    ones = np.ones(k)
    if method == "random":
        gaussian = np.random.default_rng(seed).standard_normal((d, k))
        q, _ = np.linalg.qr(gaussian)
        return _fitted(method, np.zeros(d), q.T, np.arange(k), ones)
    mean, eigenvalues, axes = _principal_axes(sample)
    if method == "pca":
        rows, scale = np.arange(k), ones
    elif method == "whiten":
        rows = np.arange(k)
        scale = 1.0 / np.sqrt(np.maximum(eigenvalues[:k], 1e-12))
    elif method == "abtt":
        drop = min(abtt_dropped(d), d - k)
        rows, scale = np.arange(drop, drop + k), ones
    else:
        raise RetrieverError(f"unknown baseline {method!r}; choose from {', '.join(BASELINES)}")
    return _fitted(method, mean, axes, rows, scale)
