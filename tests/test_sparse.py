from __future__ import annotations

import numpy as np
import pytest

from retriever import EmbedFilter, FilterSpec
from retriever.core.errors import RetrieverError
from retriever.encode.lens import TokenLens
from retriever.parts.bm25 import BM25Index
from retriever.parts.sparse import KeyTokenIndex, SparseSpec


class NumberTokenizer:
    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def decode(self, ids: list[int]) -> str:
        return " ".join(f"t{i}" for i in ids)


VOCAB, DIM, DOCS = 300, 24, 40


@pytest.fixture(scope="module")
def lens() -> TokenLens:
    unembedding = np.random.default_rng(0).normal(size=(VOCAB, DIM)).astype(np.float32)
    embed_filter = EmbedFilter.from_unembedding(unembedding, FilterSpec(tau=2))
    return TokenLens(unembedding, embed_filter, NumberTokenizer(VOCAB))


def brute_force_weights(lens: TokenLens, vectors: np.ndarray, space: str, k: int) -> np.ndarray:
    """Dense (docs, V) matrix holding e_t . x for each document's k best tokens, else 0."""
    logits = vectors @ lens.token_matrix(space).T
    kept = np.zeros_like(logits)
    for row, scores in enumerate(logits):
        best = np.argsort(-scores)[:k]
        kept[row, best] = scores[best]
    return kept


@pytest.mark.parametrize("space", ["filtered", "raw"])
def test_top_k_postings_and_scores_match_the_dense_formula(lens: TokenLens, space: str) -> None:
    rng = np.random.default_rng(1)
    embeddings = rng.normal(size=(DOCS, DIM)).astype(np.float32)
    spec = SparseSpec(doc_tokens=25, query_tokens=7, space=space)
    index = KeyTokenIndex.build(lens, lens.vectors(embeddings, space), spec, show_progress=False)
    weights = brute_force_weights(lens, lens.vectors(embeddings, space), space, 25)
    assert index.postings.shape == (VOCAB, DOCS) and index.postings.nnz == DOCS * 25
    np.testing.assert_allclose(index.postings.T.toarray(), weights, rtol=1e-5, atol=1e-6)

    queries = rng.normal(size=(5, DIM)).astype(np.float32)
    own = [[1, 2, 3], [], [299, 0], [5], [7, 7, 8]]
    query_matrix = index.query_matrix(lens, lens.vectors(queries, space), own)
    aligned = np.argsort(-(lens.vectors(queries, space) @ lens.token_matrix(space).T), axis=1)
    for row, tokens in enumerate(own):
        expected = set(tokens) | set(aligned[row, :7].tolist())
        assert set(query_matrix[row].indices.tolist()) == expected
        assert set(query_matrix[row].data.tolist()) == {1.0}

    scores, rows = index.search(query_matrix, k=10)
    brute = query_matrix.toarray() @ weights.T  # sum of the documents' weights of q's tokens
    for row in range(len(own)):
        matched = np.flatnonzero(query_matrix[row].toarray() @ (weights.T != 0))
        order = sorted(matched, key=lambda d: (-brute[row, d], d))[:10]
        assert rows[row, : len(order)].tolist() == order
        np.testing.assert_allclose(scores[row, : len(order)], brute[row, order], rtol=1e-4)
        assert (rows[row, len(order) :] == -1).all()


def test_a_query_sharing_no_token_matches_nothing(lens: TokenLens, tmp_path) -> None:
    embeddings = np.random.default_rng(2).normal(size=(6, DIM)).astype(np.float32)
    index = KeyTokenIndex.build(
        lens, lens.vectors(embeddings, "filtered"), SparseSpec(doc_tokens=3), show_progress=False
    )
    used = set(index.postings.nonzero()[0].tolist())
    unused = next(t for t in range(VOCAB) if t not in used)
    queries = index.query_matrix(lens, lens.vectors(embeddings[:1], "filtered"), [[unused]], 0)
    scores, rows = index.search(queries, k=4)
    assert (rows == -1).all() and np.isneginf(scores).all()

    index.save(tmp_path / "sparse")
    loaded = KeyTokenIndex.load(tmp_path / "sparse")
    assert loaded.spec == index.spec and (loaded.postings != index.postings).nnz == 0
    assert loaded.nbytes == index.nbytes > 0
    with pytest.raises(RetrieverError, match="cannot read the sparse index"):
        KeyTokenIndex.load(tmp_path)


def test_sparse_spec_is_checked() -> None:
    with pytest.raises(RetrieverError, match="--sparse-doc-tokens"):
        SparseSpec(doc_tokens=0)
    with pytest.raises(RetrieverError, match="--sparse-query-tokens"):
        SparseSpec(query_tokens=-1)
    with pytest.raises(RetrieverError, match="unknown sparse space"):
        SparseSpec(space="logits")
    assert SparseSpec.from_dict(SparseSpec(doc_tokens=9).to_dict()) == SparseSpec(doc_tokens=9)


def test_bm25_stems_ranks_and_round_trips(tmp_path) -> None:
    texts = [
        "Runners were running a marathon in the rain.",
        "Vitamin D deficiency and bone disease.",
        "The cat sat on the mat.",
    ]
    index = BM25Index.build(texts)
    scores, rows = index.search(["bones of a vitamin-deficient runner", "the of and"], k=3)
    assert rows[0, 0] == 1 and rows[0, 1] == 0  # "bones" -> "bone", "runner" -> "runner"
    assert rows[0, 2] == -1 and np.isneginf(scores[0, 2])  # the cat shares no word
    assert (rows[1] == -1).all()  # stopwords only
    index.save(tmp_path / "bm25")
    again = BM25Index.load(tmp_path / "bm25")
    np.testing.assert_array_equal(again.search(["marathon"], k=1)[1], [[0]])
    with pytest.raises(RetrieverError, match="empty collection"):
        BM25Index.build([])
