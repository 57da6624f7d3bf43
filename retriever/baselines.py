"""Fitted dimension-reduction baselines that EmbedFilter is measured against.

Each is fitted on a sample of the corpus being indexed (mu = its mean) and applied
identically to documents and queries, then L2-normalised like the filter:
- ``pca``: ``(h - mu) P_k``, the top-k principal directions;
- ``whiten``: ``(h - mu) U_k Lambda_k^(-1/2)`` (Su et al. 2021);
- ``abtt``: all-but-the-top (Mu & Viswanath 2018): subtract mu, drop the top D
  principal directions (D = d // 100, at least 1) and keep the next k, so that it is
  compared at the same k;
- ``random``: a seeded random orthonormal projection, no fitting.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from retriever.errors import RetrieverError

BASELINES = ("pca", "whiten", "abtt", "random")


@dataclass(frozen=True)
class FittedProjection:
    """``((h - mean) @ matrix.T) * scale``, then L2-normalised."""

    method: str
    mean: np.ndarray
    matrix: np.ndarray
    scale: np.ndarray

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[0])

    def transform(self, embeddings: np.ndarray, *, normalize: bool = True) -> np.ndarray:
        projected = ((np.asarray(embeddings, np.float32) - self.mean) @ self.matrix.T) * self.scale
        if normalize:
            norms = np.linalg.norm(projected, axis=1, keepdims=True)
            projected /= np.maximum(norms, np.finfo(np.float32).tiny)
        return projected.astype(np.float32)


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


def fit_baseline(method: str, sample: np.ndarray, k: int, *, seed: int = 0) -> FittedProjection:
    """Fit ``method`` (one of :data:`BASELINES`) on ``sample`` (n, d) to output k dims."""
    d = int(sample.shape[1])
    if not 1 <= k <= d:
        raise RetrieverError(f"a {method} baseline needs 1 <= k <= {d}, got {k}")
    ones = np.ones(k, dtype=np.float32)
    if method == "random":
        gaussian = np.random.default_rng(seed).standard_normal((d, k))
        q, _ = np.linalg.qr(gaussian)
        return FittedProjection(method, np.zeros(d, np.float32), q.T.astype(np.float32), ones)
    mean, eigenvalues, axes = _principal_axes(sample)
    if method == "pca":
        rows, scale = slice(0, k), ones
    elif method == "whiten":
        rows = slice(0, k)
        scale = (1.0 / np.sqrt(np.maximum(eigenvalues[:k], 1e-12))).astype(np.float32)
    elif method == "abtt":
        drop = min(abtt_dropped(d), d - k)
        rows, scale = slice(drop, drop + k), ones
    else:
        raise RetrieverError(f"unknown baseline {method!r}; choose from {', '.join(BASELINES)}")
    return FittedProjection(method, mean.astype(np.float32), axes[rows].astype(np.float32), scale)
