from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from retriever.config import EncoderConfig
from retriever.embedding_cache import cached_embeddings
from retriever.encoder import Encoder

TEXTS = ["bone disease", "a quick fox", "dense vectors"]


@pytest.fixture
def counting_encoder(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> Encoder:
    encoder = Encoder.load(str(tiny_model), EncoderConfig(), dtype="float32")
    encoder.calls = []
    original = encoder.encode_poolings

    def counted(texts, poolings, **kwargs):
        encoder.calls.append((list(texts), tuple(poolings)))
        return original(texts, poolings, **kwargs)

    monkeypatch.setattr(encoder, "encode_poolings", counted)
    return encoder


def test_hit_returns_the_same_vectors_without_encoding(
    counting_encoder: Encoder, tmp_path: Path
) -> None:
    first = cached_embeddings(
        counting_encoder, TEXTS, ["mean", "last"], queries=False, root=tmp_path, show_progress=False
    )
    assert counting_encoder.calls == [(TEXTS, ("mean", "last"))]  # one pass for both
    again = cached_embeddings(
        counting_encoder, TEXTS, ["last", "mean"], queries=False, root=tmp_path, show_progress=False
    )
    assert len(counting_encoder.calls) == 1
    for pooling in ("mean", "last"):
        np.testing.assert_array_equal(first[pooling], again[pooling])
    assert not list((tmp_path / "embeddings").glob("*.partial"))


@pytest.mark.parametrize(
    "change",
    [
        "texts",
        "order",
        "queries",
        "pooling",
        "prompt",
        "max_length",
        "instruction",
        "dtype",
        "weights",
    ],
)
def test_any_key_change_misses(
    change: str, counting_encoder: Encoder, other_tiny_model: Path, tmp_path: Path
) -> None:
    cached_embeddings(
        counting_encoder, TEXTS, ["mean"], queries=False, root=tmp_path, show_progress=False
    )
    texts, poolings, queries = TEXTS, ["mean"], False
    encoder = counting_encoder
    if change == "texts":
        texts = [*TEXTS[:2], "dense vector"]
    elif change == "order":
        texts = TEXTS[::-1]
    elif change == "queries":
        queries = True
    elif change == "pooling":
        poolings = ["last"]
    elif change == "prompt":
        encoder.config = replace(encoder.config, prompt="echo")
    elif change == "max_length":
        encoder.config = replace(encoder.config, max_length=64)
    elif change == "instruction":
        encoder.config = replace(encoder.config, document_instruction="Passage: ")
    elif change == "dtype":
        import torch

        encoder.model = encoder.model.to(torch.bfloat16)
        encoder.dtype = torch.bfloat16
    elif change == "weights":
        other = Encoder.load(str(other_tiny_model), EncoderConfig(), dtype="float32")
        encoder.resolved = other.resolved
    cached_embeddings(encoder, texts, poolings, queries=queries, root=tmp_path, show_progress=False)
    assert len(counting_encoder.calls) == 2
