from __future__ import annotations

import numpy as np
import pytest

from retriever.core.errors import RetrieverError
from retriever.core.spec import FilterSpec
from retriever.encode.baselines import BASELINES, abtt_dropped, fit_baseline
from retriever.encode.embedfilter import EmbedFilter


@pytest.fixture(scope="module")
def sample() -> np.ndarray:
    rng = np.random.default_rng(0)
    # A common offset and decaying variances, like raw LLM embeddings.
    scales = np.linspace(4.0, 0.2, 64)
    scales[:2] = [10.0, 7.0]  # well-separated leading axes: coordinates 0, then 1
    return (rng.standard_normal((800, 64)) * scales + 3.0).astype(np.float32)


@pytest.mark.parametrize("method", BASELINES)
def test_shapes_and_normalisation(method: str, sample: np.ndarray) -> None:
    projection = fit_baseline(method, sample, 16, seed=1)
    out = projection.transform(sample[:10])
    assert projection.dim == 16 and out.shape == (10, 16) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("method", ["pca", "abtt", "random"])
def test_projection_rows_are_orthonormal(method: str, sample: np.ndarray) -> None:
    matrix = fit_baseline(method, sample, 16).matrix
    np.testing.assert_allclose(matrix @ matrix.T, np.eye(16), atol=1e-5)


def test_pca_keeps_the_top_variance_and_abtt_skips_it(sample: np.ndarray) -> None:
    pca = fit_baseline("pca", sample, 8)
    abtt = fit_baseline("abtt", sample, 8)
    # Centred on the sample's mean: the mean projects to the origin.
    centre = pca.transform(sample.mean(0, keepdims=True), normalize=False)
    np.testing.assert_allclose(centre, 0.0, atol=1e-3)
    # The data's largest-variance axis is coordinate 0: PCA's first row, not ABTT's.
    assert abs(pca.matrix[0, 0]) > 0.99
    assert abtt_dropped(64) == 1 and abs(abtt.matrix[0, 0]) < 0.1
    np.testing.assert_allclose(abs(abtt.matrix[0]), abs(pca.matrix[1]), atol=1e-5)


def test_whitening_gives_unit_covariance(sample: np.ndarray) -> None:
    white = fit_baseline("whiten", sample, 16).transform(sample, normalize=False)
    np.testing.assert_allclose(np.cov(white.T), np.eye(16), atol=1e-3)
    np.testing.assert_allclose(white.mean(0), 0.0, atol=1e-4)


def test_random_is_seeded(sample: np.ndarray) -> None:
    a, b = fit_baseline("random", sample, 8, seed=3), fit_baseline("random", sample, 8, seed=3)
    np.testing.assert_array_equal(a.matrix, b.matrix)
    assert not np.allclose(a.matrix, fit_baseline("random", sample, 8, seed=4).matrix)


def test_bad_baselines(sample: np.ndarray) -> None:
    with pytest.raises(RetrieverError, match="unknown baseline 'lda'"):
        fit_baseline("lda", sample, 8)
    with pytest.raises(RetrieverError, match="1 <= k <= 64"):
        fit_baseline("pca", sample, 65)


@pytest.mark.parametrize("tau", [1, 2, 4])
def test_removing_the_mean_direction(tau: int) -> None:
    rng = np.random.default_rng(5)
    # A vocabulary with a strong common offset, as real unembedding matrices have.
    unembedding = rng.standard_normal((500, 32)) + 2.0 * rng.standard_normal(32)
    plain = EmbedFilter.from_unembedding(
        unembedding, FilterSpec(tau=tau, remove_mean_direction=False)
    )
    refined = EmbedFilter.from_unembedding(
        unembedding, FilterSpec(tau=tau, remove_mean_direction=True)
    )
    u = plain.matrix @ unembedding.mean(0)
    u /= np.linalg.norm(u)
    h = rng.standard_normal((6, 32)).astype(np.float32)
    expected = plain.transform(h, normalize=False)
    expected -= np.outer(expected @ u, u)
    np.testing.assert_allclose(refined.transform(h, normalize=False), expected, atol=1e-4)
    # Every filtered vector is now orthogonal to u; the filter keeps its output size.
    np.testing.assert_allclose(refined.transform(h) @ u, 0.0, atol=1e-5)
    assert refined.dim == plain.dim and not refined.is_identity


@pytest.mark.parametrize("method", BASELINES)
def test_a_fitted_projection_saves_and_loads_as_a_filter(
    method: str, sample: np.ndarray, tmp_path
) -> None:
    from retriever.encode.embedfilter import EmbedFilter

    fitted = fit_baseline(method, sample, 16, seed=2)
    fitted.save(tmp_path)
    loaded = EmbedFilter.load(tmp_path)
    assert loaded.name == method and not loaded.is_identity
    np.testing.assert_array_equal(loaded.transform(sample[:5]), fitted.transform(sample[:5]))
