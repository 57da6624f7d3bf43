from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from retriever import EmbedFilter, FilterSpec
from retriever.cli import main
from retriever.core.errors import RetrieverError
from retriever.core.spec import IndexSpec, ModelSpec
from retriever.encode.lens import (
    TokenLens,
    alignment_metrics,
    english_stopwords,
    is_display_word,
    is_junk,
    word_key,
)
from retriever.encode.models import load_model, resolve_model


class WordTokenizer:
    """Just what the lens reads of a tokenizer: a length and single-token decoding."""

    def __init__(self, words: list[str]) -> None:
        self.words = words

    def __len__(self) -> int:
        return len(self.words)

    def decode(self, ids: list[int]) -> str:
        return "".join(self.words[i] for i in ids)


WORDS = ["the", " Cat", "cat", ",", "dog", " bone", " and", "vitamin"]


def identity_lens() -> TokenLens:
    unembedding = np.eye(len(WORDS), dtype=np.float32)
    return TokenLens(
        unembedding,
        EmbedFilter.from_unembedding(unembedding, FilterSpec(tau=1)),
        WordTokenizer(WORDS),
    )


@pytest.fixture(scope="module")
def tiny_unembedding(tiny_model: Path) -> tuple[np.ndarray, object]:
    import torch

    model, tokenizer = load_model(
        resolve_model(str(tiny_model)), torch.float32, torch.device("cpu")
    )
    return model.get_output_embeddings().weight.detach().numpy().copy(), tokenizer


@pytest.mark.parametrize("tau", [1, 2])
def test_a_planted_token_direction_ranks_that_token_first(tiny_unembedding, tau) -> None:
    unembedding, tokenizer = tiny_unembedding
    embed_filter = EmbedFilter.from_unembedding(unembedding, FilterSpec(tau=tau))
    lens = TokenLens(unembedding, embed_filter, tokenizer)
    planted = [7, 42, 150, 333]
    # A hidden state pointing along token t's unembedding row, seen through the filter:
    # the filtered view of F^T F e_t must rank t first, as the raw view of e_t does.
    rows = unembedding[planted]
    for space, vectors in (
        ("raw", rows),
        ("filtered", rows @ embed_filter.matrix.T @ embed_filter.matrix),
    ):
        tops = lens.top_tokens(vectors, space, top=5)
        assert [top[0].id for top in tops] == planted, space
        assert all(
            top[0].token == tokenizer.decode([t]) for top, t in zip(tops, planted, strict=True)
        )
        assert all(
            [tok.score for tok in top] == sorted((tok.score for tok in top), reverse=True)
            for top in tops
        )


def test_filtered_scores_are_the_logits_of_the_mapped_back_vector(tiny_unembedding) -> None:
    unembedding, tokenizer = tiny_unembedding
    spec = FilterSpec(tau=2, remove_mean_direction=True)
    embed_filter = EmbedFilter.from_unembedding(unembedding, spec)
    lens = TokenLens(unembedding, embed_filter, tokenizer)
    h = np.random.default_rng(0).normal(size=(3, unembedding.shape[1])).astype(np.float32)
    ids, scores = lens.top_ids(lens.vectors(h, "filtered"), "filtered", top=10)
    x = embed_filter.transform(h)
    logits = (x @ embed_filter.matrix) @ unembedding.T  # W F^T x, written out
    np.testing.assert_allclose(
        scores, np.take_along_axis(logits, ids, axis=1), rtol=1e-4, atol=1e-5
    )
    np.testing.assert_array_equal(ids[:, 0], logits.argmax(axis=1))
    raw_ids, _ = lens.top_ids(lens.vectors(h, "raw"), "raw", top=1)
    np.testing.assert_array_equal(raw_ids[:, 0], (h @ unembedding.T).argmax(axis=1))
    with pytest.raises(RetrieverError, match="unknown lens space"):
        lens.vectors(h, "both")


def test_alignment_metrics_by_hand() -> None:
    lens = identity_lens()
    # Text A literally holds " Cat" and "dog"; its embedding leans to "cat", then "dog".
    # Text B holds " bone"; its embedding leans to ",", then " bone".
    embeddings = np.zeros((2, len(WORDS)), dtype=np.float32)
    embeddings[0, [2, 4, 0]] = [1.0, 0.5, 0.1]
    embeddings[1, [3, 5]] = [1.0, 0.2]
    metrics = alignment_metrics(lens, embeddings, [[1, 4, 1], [5]], "raw", hit_at=2)
    assert metrics == {
        "texts": 2,
        "hit_at_2": 1.0,  # A: cat, dog; B: ",", bone
        "content_hit_at_2": 1.0,  # cat and bone are not junk
        "local_alignment_rate": 0.5,  # A: {cat, dog} in its top 2 words; B: "," is not bone
        "global_alignment_rate": pytest.approx(2 / 3),  # cat, dog of {cat, dog, bone}
        "junk_at_2": 0.25,  # A: none; B: ","
        # Shown words start a word: A shows " Cat", " bone"; B shows " bone", " Cat".
        "displayed_hit_at_2": 1.0,
    }
    assert word_key(" Cat") == "cat" and is_junk(",", frozenset()) and is_junk("the", {"the"})


def test_displayed_tokens_are_whole_words_without_junk() -> None:
    lens = identity_lens()
    embedding = np.zeros((1, len(WORDS)), dtype=np.float32)
    embedding[0, [3, 0, 2, 6, 5, 1]] = [1.0, 0.9, 0.8, 0.7, 0.6, 0.5]
    assert [t.token for t in lens.top_tokens(embedding, "raw", 4)[0]] == [",", "the", "cat", " and"]
    shown = lens.top_tokens(embedding, "raw", 4, words_only=True)[0]
    assert [t.token for t in shown] == [" bone", " Cat"]  # all the words there are
    assert shown[0].score / shown[1].score == pytest.approx(0.6 / 0.5)  # scores untouched
    stop = frozenset({"the", "nor"})
    assert is_display_word(" disease", stop) and is_display_word(" COVID-19", stop)
    for token in ("idisciplinary", " ),", "=(", " nor", " x", " th", " !).", "\n   "):
        assert not is_display_word(token, stop), token


def test_lens_cli_prints_raw_and_filtered_tokens(tiny_model: Path, tmp_path: Path, capsys) -> None:
    from retriever import build_index
    from tests.conftest import TOY_DOCS, write_jsonl

    index = build_index(
        write_jsonl(tmp_path / "docs.jsonl", TOY_DOCS),
        tmp_path / "idx",
        IndexSpec(model=ModelSpec(name=str(tiny_model), dtype="float32")),
    )
    lens = ["-q", "lens", str(index), "bone disease", "--top", "7", "--json"]
    assert main([*lens, "--all-tokens"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["text"] == "bone disease"
    assert len(report["raw"]) == 7 and len(report["filtered"]) == 7
    assert set(report["raw"][0]) == {"token", "score", "id"}
    assert report["raw"] != report["filtered"]
    assert main(lens) == 0  # words only: whole words, no stopwords or punctuation
    words = json.loads(capsys.readouterr().out)
    stopwords = english_stopwords()
    for space in ("raw", "filtered"):
        assert 0 < len(words[space]) <= 7
        assert all(is_display_word(token["token"], stopwords) for token in words[space])
    assert main(["-q", "lens", str(index), "bone disease", "--top", "3"]) == 0
    assert "filtered W F^T F h" in capsys.readouterr().out

    texts = tmp_path / "texts.txt"
    texts.write_text("bone disease and vitamin D\n\nthe quick brown fox\n")
    assert main(["-q", "lens", str(index), "--texts", str(texts), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {"raw", "filtered"} and report["raw"]["texts"] == 2
    assert main(["-q", "lens", str(index), "--texts", str(tmp_path / "docs.jsonl")]) == 0
    assert "local_alignment_rate" in capsys.readouterr().out

    assert main(["lens", str(index)]) == 2
    assert "give either one TEXT or --texts PATH" in capsys.readouterr().err
    assert main(["lens", str(index), "x", "--top", "0"]) == 2
    assert "--top must be at least 1" in capsys.readouterr().err
    assert main(["lens", str(index), "--texts", str(tmp_path / "missing.txt")]) == 2
    assert "cannot read" in capsys.readouterr().err
