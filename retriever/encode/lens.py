"""Token lens: read an embedding as a ranking of the vocabulary through the unembedding matrix.

``W h`` scores every token against a pooled embedding ``h`` (the "raw" view). The
"filtered" view scores the vector the index stores, ``x = F h`` normalised, mapped back
to model space: ``W F^T x``. For a raw LLM the raw view is led by frequent junk
(punctuation, "the", "and"); docs/method.md says the filtered one should be led by
the text's key words. Alignment metrics (after Nie et al. 2024) measure that on a text set.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any

import numpy as np

from retriever.core.config import SPACES
from retriever.core.errors import RetrieverError
from retriever.encode.embedfilter import EmbedFilter

# Rows of logits scored at once: bounds memory at ~50 MB for a 49k vocabulary.
_ROWS_PER_BLOCK = 256
# Ranked tokens searched for display words: enough that junk and sub-words ahead of them
# (up to 90% of a raw top list) still leave the words asked for.
_DISPLAY_DEPTH = 40


@dataclass(frozen=True)
class AlignedToken:
    """A vocabulary token and its alignment score ``e_t . x`` with an embedding."""

    id: int
    token: str
    score: float

    def to_dict(self) -> dict[str, Any]:
        return {"token": self.token, "score": self.score, "id": self.id}


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, np.finfo(np.float32).tiny)


def _check_space(space: str) -> None:
    if space not in SPACES:
        raise RetrieverError(f"unknown lens space {space!r}; choose one of {', '.join(SPACES)}")


class TokenLens:
    """Scores embeddings against every token of a model's vocabulary, raw or filtered."""

    def __init__(self, unembedding: np.ndarray, embed_filter: EmbedFilter, tokenizer: Any) -> None:
        if unembedding.shape[1] != embed_filter.model_dim:
            raise RetrieverError(
                f"unembedding width {unembedding.shape[1]} does not match the filter's "
                f"model dimension {embed_filter.model_dim}"
            )
        # Rows past the tokenizer's vocabulary are padding that no text can contain.
        vocabulary = min(len(unembedding), len(tokenizer))
        self.unembedding = np.ascontiguousarray(unembedding[:vocabulary], dtype=np.float32)
        self.filter = embed_filter
        self.tokenizer = tokenizer
        self._strings: dict[int, str] = {}

    @property
    def vocabulary_size(self) -> int:
        return int(self.unembedding.shape[0])

    @cached_property
    def _filtered_unembedding(self) -> np.ndarray:
        # W F^T: the logits of F^T x for a filtered vector x, in one product. F^T undoes the
        # band exactly, and also the mean-direction variant: x is orthogonal to u already.
        return np.ascontiguousarray(self.unembedding @ self.filter.matrix.T)

    def vectors(self, embeddings: np.ndarray, space: str) -> np.ndarray:
        """The vectors a space scores: unit ``h`` (raw), or the index's unit ``F h`` (filtered)."""
        _check_space(space)
        if space == "raw":
            return _unit_rows(embeddings)
        return self.filter.transform(embeddings)

    def token_matrix(self, space: str) -> np.ndarray:
        """``(V, m)``: row ``t`` is what token ``t``'s score is the dot product with."""
        _check_space(space)
        return self.unembedding if space == "raw" else self._filtered_unembedding

    def top_ids(self, vectors: np.ndarray, space: str, top: int) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, scores)``, each ``(n, top)``, best first, for vectors of ``space``."""
        return self.top_ids_at(vectors, space, [top])[0]

    def top_ids_at(
        self, vectors: np.ndarray, space: str, tops: Sequence[int]
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """:meth:`top_ids` for each depth in ``tops``, from one pass over the logits."""
        if min(tops) < 1:
            raise RetrieverError(f"--top must be at least 1, got {min(tops)}")
        matrix = self.token_matrix(space)
        tops = [min(top, len(matrix)) for top in tops]
        vectors = np.asarray(vectors, dtype=np.float32)
        results = [
            (
                np.empty((len(vectors), top), dtype=np.int64),
                np.empty((len(vectors), top), dtype=np.float32),
            )
            for top in tops
        ]
        for lo in range(0, len(vectors), _ROWS_PER_BLOCK):
            logits = vectors[lo : lo + _ROWS_PER_BLOCK] @ matrix.T
            for top, (ids, scores) in zip(tops, results, strict=True):
                best = np.argpartition(-logits, top - 1, axis=1)[:, :top]
                best_scores = np.take_along_axis(logits, best, axis=1)
                order = np.argsort(-best_scores, axis=1, kind="stable")
                ids[lo : lo + len(logits)] = np.take_along_axis(best, order, axis=1)
                scores[lo : lo + len(logits)] = np.take_along_axis(best_scores, order, axis=1)
        return results

    def token_string(self, token_id: int) -> str:
        """The token as text (a leading space shows a word start)."""
        token_id = int(token_id)
        if token_id not in self._strings:
            self._strings[token_id] = self.tokenizer.decode([token_id])
        return self._strings[token_id]

    def top_tokens(
        self, embeddings: np.ndarray, space: str, top: int = 20, *, words_only: bool = False
    ) -> list[list[AlignedToken]]:
        """The ``top`` best-aligned tokens of each pooled embedding, best first.

        ``words_only`` keeps what a person should be shown: whole words (tokens that start
        a word), no stopwords or punctuation, one token per word. It only filters the
        ranking; scores and the index are untouched.
        """
        ids, scores = self.top_ids(
            self.vectors(embeddings, space), space, ranking_depth(top, words_only)
        )
        return self.tokens_from_ids(ids, scores, top, words_only=words_only)

    def tokens_from_ids(
        self, ids: np.ndarray, scores: np.ndarray, top: int, *, words_only: bool = False
    ) -> list[list[AlignedToken]]:
        """:meth:`top_tokens` from rankings :meth:`top_ids` gave, ``ranking_depth`` deep."""
        stopwords = english_stopwords() if words_only else frozenset()
        ranked = []
        for row_ids, row_scores in zip(ids, scores, strict=True):
            tokens, seen = [], set()
            for t, score in zip(row_ids.tolist(), row_scores.tolist(), strict=True):
                token = self.token_string(t)
                if words_only:
                    key = word_key(token)
                    if not is_display_word(token, stopwords) or key in seen:
                        continue
                    seen.add(key)
                tokens.append(AlignedToken(t, token, score))
                if len(tokens) == top:
                    break
            ranked.append(tokens)
        return ranked


def ranking_depth(top: int, words_only: bool) -> int:
    """Ranked tokens to read for ``top`` tokens (many more when only words are shown)."""
    return top * _DISPLAY_DEPTH if words_only else top


def word_key(token: str) -> str:
    """What alignment compares: the token without its word-start space, lower-cased."""
    return token.strip().lower()


def is_junk(key: str, stopwords: frozenset[str]) -> bool:
    """A key with no letter or digit (punctuation, symbols), or a stopword."""
    return not any(c.isalnum() for c in key) or key in stopwords


@lru_cache(maxsize=1)
def english_stopwords() -> frozenset[str]:
    from bm25s.stopwords import STOPWORDS_EN_PLUS

    return frozenset(STOPWORDS_EN_PLUS)


def is_display_word(token: str, stopwords: frozenset[str]) -> bool:
    """A token worth showing: it starts a word (a leading space in byte-level BPE, so not
    a fragment such as "idisciplinary"), is made of letters (digits and inner hyphens
    allowed), has three characters or more (two-letter word starts such as " de", " th"
    are mostly fragments), and is not a stopword."""
    key = word_key(token)
    return (
        token[:1].isspace()
        and len(key) >= 3
        and any(c.isalpha() for c in key)
        and all(c.isalnum() or c == "-" for c in key)
        and key not in stopwords
    )


def alignment_metrics(
    lens: TokenLens,
    embeddings: np.ndarray,
    text_token_ids: Sequence[Sequence[int]],
    space: str,
    *,
    hit_at: int = 10,
) -> dict[str, float]:
    """How well the top aligned tokens of each text match the words it literally contains.

    Tokens are compared as words (:func:`word_key`), so " Disease" and "disease" are one.
    For each text, ``T`` is its set of literal words and ``A_K`` its ``K`` best-aligned
    distinct words:

    - ``hit_at_10``: share of texts with a literal word among ``A_10``;
    - ``content_hit_at_10``: the same, counting only words that are not junk (below), since
      a stopword every text contains makes the plain Hit@10 trivial;
    - ``local_alignment_rate``: mean over texts of ``|A_K & T| / |T|`` with ``K = |T|``;
    - ``global_alignment_rate``: ``|union(A_K & T)| / |union(T)|`` over the whole set:
      the share of the collection's distinct words that some text containing them aligns;
    - ``junk_at_10``: share of the ``A_10`` words that are stopwords or punctuation;
    - ``displayed_hit_at_10``: content Hit@10 of exactly what the lens shows a person (its
      ``words_only`` top 10: whole words, no stopwords or punctuation).
    """
    if len(embeddings) != len(text_token_ids):
        raise ValueError("one list of token ids per embedding is needed")
    stopwords = english_stopwords()
    literal = [
        {key for key in (word_key(lens.token_string(t)) for t in set(ids)) if key}
        for ids in text_token_ids
    ]
    longest = max((len(words) for words in literal), default=0)
    # Enough ranked ids to find `longest` distinct words despite case and space variants.
    # One pass over the logits serves both rankings: the literal metrics' and the display's.
    (ids, _), (shown_ids, shown_scores) = lens.top_ids_at(
        lens.vectors(embeddings, space),
        space,
        [3 * max(longest, hit_at) + 10, ranking_depth(hit_at, words_only=True)],
    )
    displayed = lens.tokens_from_ids(shown_ids, shown_scores, hit_at, words_only=True)
    hits, content_hits, local, junk = [], [], [], []
    aligned_union: set[str] = set()
    literal_union: set[str] = set()
    for row, words in zip(ids, literal, strict=True):
        ranked = list(dict.fromkeys(k for k in (word_key(lens.token_string(t)) for t in row) if k))
        head = ranked[:hit_at]
        hits.append(bool(words.intersection(head)))
        content = [k for k in head if not is_junk(k, stopwords)]
        content_hits.append(bool(words.intersection(content)))
        junk.append((len(head) - len(content)) / max(len(head), 1))
        if words:
            matched = words.intersection(ranked[: len(words)])
            local.append(len(matched) / len(words))
            aligned_union |= matched
            literal_union |= words
    return {
        "texts": len(literal),
        f"hit_at_{hit_at}": float(np.mean(hits)) if hits else 0.0,
        f"content_hit_at_{hit_at}": float(np.mean(content_hits)) if content_hits else 0.0,
        "local_alignment_rate": float(np.mean(local)) if local else 0.0,
        "global_alignment_rate": len(aligned_union) / len(literal_union) if literal_union else 0.0,
        f"junk_at_{hit_at}": float(np.mean(junk)) if junk else 0.0,
        f"displayed_hit_at_{hit_at}": float(
            np.mean(
                [
                    bool(words.intersection(word_key(t.token) for t in shown))
                    for words, shown in zip(literal, displayed, strict=True)
                ]
            )
        )
        if literal
        else 0.0,
    }
