from __future__ import annotations

import numpy as np
import pytest

from retriever.core.errors import RetrieverError
from retriever.core.spec import FilterSpec
from retriever.encode.embedfilter import EmbedFilter, band_rows, right_singular_vectors


@pytest.fixture(scope="module")
def unembedding() -> np.ndarray:
    # Anisotropic like a real vocabulary matrix: distinct singular values.
    rng = np.random.default_rng(0)
    return (rng.standard_normal((1500, 576)) * np.linspace(3.0, 0.1, 576)).astype(np.float32)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (FilterSpec(tau=2), (144, 432)),
        (FilterSpec(tau=4), (216, 360)),
        (FilterSpec(tau=8), (252, 324)),
        (FilterSpec(tau=2, band="tail"), (0, 288)),
        (FilterSpec(tau=2, band="head"), (288, 576)),
        (FilterSpec(dim=100, start=128), (128, 228)),
        (FilterSpec(dim=576), (0, 576)),
    ],
)
def test_band_rows_match_the_method(spec: FilterSpec, expected: tuple[int, int]) -> None:
    assert band_rows(spec, 576).tolist() == list(range(*expected))


def test_method_md_example_for_qwen_width() -> None:
    assert [band_rows(FilterSpec(tau=t), 896)[[0, -1]].tolist() for t in (2, 4, 8)] == [
        [224, 671],
        [336, 559],
        [392, 503],
    ]


def test_rand_band_is_seeded_sorted_and_unique() -> None:
    rows = band_rows(FilterSpec(tau=4, band="rand", seed=3), 576)
    assert len(rows) == 144 and len(set(rows.tolist())) == 144
    assert np.all(np.diff(rows) > 0)
    assert rows.tolist() == band_rows(FilterSpec(tau=4, band="rand", seed=3), 576).tolist()
    assert rows.tolist() != band_rows(FilterSpec(tau=4, band="rand", seed=4), 576).tolist()


def test_right_singular_vectors_equal_svd_up_to_sign(unembedding: np.ndarray) -> None:
    vh, sigma = right_singular_vectors(unembedding)
    _, s_ref, vh_ref = np.linalg.svd(unembedding.astype(np.float64), full_matrices=False)
    np.testing.assert_allclose(sigma, s_ref, rtol=1e-6)
    agreement = np.abs(np.sum(vh * vh_ref, axis=1))  # |cos| between matching rows
    np.testing.assert_allclose(agreement, 1.0, atol=1e-6)
    assert np.all(np.diff(sigma) <= 0)


@pytest.mark.parametrize("tau", [2, 4, 8])
def test_filter_rows_are_orthonormal(unembedding: np.ndarray, tau: int) -> None:
    f = EmbedFilter.from_unembedding(unembedding, FilterSpec(tau=tau, remove_mean_direction=False))
    assert f.matrix.shape == (576 // tau, 576)
    np.testing.assert_allclose(f.matrix @ f.matrix.T, np.eye(576 // tau), atol=1e-5)


def test_filtered_dot_products_equal_the_projection_in_model_space(
    unembedding: np.ndarray,
) -> None:
    f = EmbedFilter.from_unembedding(unembedding, FilterSpec(tau=2, remove_mean_direction=False))
    h = np.random.default_rng(1).standard_normal((5, 576)).astype(np.float32)
    projection = f.matrix.T @ f.matrix  # F^T F, d x d
    np.testing.assert_allclose(
        f.transform(h, normalize=False) @ f.transform(h, normalize=False).T,
        h @ projection @ h.T,
        rtol=1e-4,
        atol=1e-3,
    )


def test_tau_one_is_the_unfiltered_baseline(unembedding: np.ndarray) -> None:
    f = EmbedFilter.from_unembedding(unembedding, FilterSpec(tau=1))
    h = np.random.default_rng(2).standard_normal((4, 576)).astype(np.float32)
    assert f.is_identity
    np.testing.assert_allclose(
        f.transform(h), h / np.linalg.norm(h, axis=1, keepdims=True), rtol=1e-6
    )


def test_transform_normalises_and_checks_width(unembedding: np.ndarray) -> None:
    f = EmbedFilter.from_unembedding(unembedding, FilterSpec(tau=4, remove_mean_direction=False))
    out = f.transform(np.random.default_rng(3).standard_normal((3, 576)))
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="shape"):
        f.transform(np.ones((2, 100)))


@pytest.mark.parametrize("spec", [FilterSpec(tau=2), FilterSpec(tau=4, band="rand", seed=7)])
def test_save_load_round_trip(unembedding: np.ndarray, spec: FilterSpec, tmp_path) -> None:
    f = EmbedFilter.from_unembedding(unembedding, spec)
    f.save(tmp_path)
    loaded = EmbedFilter.load(tmp_path)
    assert loaded.spec == spec
    assert loaded.rows.tolist() == f.rows.tolist()
    np.testing.assert_array_equal(loaded.matrix, f.matrix)
    # Stored as plain .npy, never a pickle.
    np.load(tmp_path / "filter.npy", allow_pickle=False)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tau": 0.5}, "--tau must be a finite number >= 1"),
        ({"tau": 0}, "--tau must be a finite number >= 1"),
        ({"tau": None, "dim": 0}, "--dim must be at least 1"),
        ({"tau": 2, "dim": 10}, "exactly one of --tau and --dim"),
        ({"band": "middle"}, "unknown band"),
    ],
)
def test_invalid_specs_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(RetrieverError, match=message):
        FilterSpec(**kwargs)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (FilterSpec(tau=None, dim=577), "keeps 577 of the model's 576"),
        (FilterSpec(tau=1000), "keeps 0 of the model's 576"),
        (FilterSpec(dim=200, start=400), "runs past the model's 576"),
    ],
)
def test_sizes_out_of_range_for_the_model(spec: FilterSpec, message: str) -> None:
    with pytest.raises(RetrieverError, match=message):
        band_rows(spec, 576)


def test_the_default_filter_removes_the_mean_direction_and_is_named() -> None:
    from retriever.core.spec import FilterSpec

    assert FilterSpec().remove_mean_direction is True
    assert FilterSpec(tau=4).remove_mean_direction is True
    assert FilterSpec(tau=1).remove_mean_direction is False  # tau 1: the unfiltered baseline
    assert FilterSpec(remove_mean_direction=False).remove_mean_direction is False
    assert FilterSpec.from_dict(FilterSpec(remove_mean_direction=False).to_dict()) == FilterSpec(
        remove_mean_direction=False
    )
    unembedding = np.random.default_rng(0).standard_normal((200, 16)).astype(np.float32)
    names = {
        spec: EmbedFilter.from_unembedding(unembedding, spec).name
        for spec in (FilterSpec(), FilterSpec(remove_mean_direction=False), FilterSpec(tau=1))
    }
    assert list(names.values()) == ["embedfilter-nomean", "embedfilter", "unfiltered"]
    assert EmbedFilter.from_unembedding(unembedding, FilterSpec()).describe()["name"] == (
        "embedfilter-nomean"
    )
