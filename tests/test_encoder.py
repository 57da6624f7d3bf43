from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from retriever.config import EncoderConfig, FilterSpec
from retriever.embedfilter import EmbedFilter
from retriever.encoder import Encoder, head_tail
from retriever.errors import RetrieverError
from retriever.models import pick_dtype, resolve_model

TEXTS = [
    "Vitamin D deficiency is associated with bone disease.",
    "fox",
    "Dense retrieval encodes queries and documents into vectors, " * 6,
    "Café, naïve, 東京 ☕",
]


def _encoder(model: Path, **config) -> Encoder:
    return Encoder.load(str(model), EncoderConfig(**config), dtype="float32", batch_size=2)


def test_head_tail_truncation() -> None:
    ids = list(range(10))
    assert head_tail(ids, 20) == ids
    assert head_tail(ids, 4) == [0, 1, 8, 9]
    assert head_tail(ids, 5) == [0, 1, 2, 8, 9]
    assert head_tail(ids, 1) == [0]


@pytest.mark.parametrize("pooling", ["mean", "last"])
@pytest.mark.parametrize("prompt", ["prompteol", "echo", "none"])
def test_batching_and_padding_do_not_change_embeddings(
    tiny_model: Path, prompt: str, pooling: str
) -> None:
    encoder = _encoder(tiny_model, prompt=prompt, pooling=pooling)
    batched = encoder.encode_documents(TEXTS, show_progress=False)
    encoder.batch_size = 1
    one_by_one = encoder.encode_documents(TEXTS, show_progress=False)
    assert batched.dtype == np.float32 and batched.shape == (4, 32)
    np.testing.assert_allclose(batched, one_by_one, rtol=1e-4, atol=1e-5)


def _token_states(encoder: Encoder, text: str) -> tuple[torch.Tensor, int, int]:
    item = encoder._prepare([text], "")[0]
    with torch.inference_mode():
        states = encoder.model.base_model(input_ids=torch.tensor([item.ids])).last_hidden_state[0]
    return states, item.start, item.end


def test_mean_pooling_uses_the_whole_prompted_input(tiny_model: Path) -> None:
    encoder = _encoder(tiny_model, prompt="prompteol", pooling="mean")
    states, start, end = _token_states(encoder, TEXTS[0])
    assert (start, end) == (0, len(states))
    np.testing.assert_allclose(
        encoder.encode_documents(TEXTS[:1], show_progress=False)[0],
        states.mean(0).numpy(),
        rtol=1e-4,
        atol=1e-5,
    )


def test_last_pooling_takes_the_final_token(tiny_model: Path) -> None:
    encoder = _encoder(tiny_model, prompt="prompteol", pooling="last")
    states, _, _ = _token_states(encoder, TEXTS[1])
    np.testing.assert_allclose(
        encoder.encode_documents(TEXTS[1:2], show_progress=False)[0],
        states[-1].numpy(),
        rtol=1e-4,
        atol=1e-5,
    )


def test_echo_pools_over_the_second_copy_only(tiny_model: Path) -> None:
    encoder = _encoder(tiny_model, prompt="echo", pooling="mean")
    item = encoder._prepare(["bone disease"], "")[0]
    body = encoder.tokenizer("bone disease", add_special_tokens=False)["input_ids"]
    assert item.ids[item.start : item.end] == body
    assert item.ids.count(body[0]) >= 2 and item.start > len(body)
    states, start, end = _token_states(encoder, "bone disease")
    np.testing.assert_allclose(
        encoder.encode_documents(["bone disease"], show_progress=False)[0],
        states[start:end].mean(0).numpy(),
        rtol=1e-4,
        atol=1e-5,
    )


def test_filtering_the_pooled_vector_equals_pooling_filtered_token_states(
    tiny_model: Path,
) -> None:
    encoder = _encoder(tiny_model, prompt="prompteol", pooling="mean")
    embed_filter = EmbedFilter.from_unembedding(encoder.unembedding(), FilterSpec(tau=2))
    states, _, _ = _token_states(encoder, TEXTS[2])
    pooled_then_filtered = embed_filter.transform(states.mean(0, keepdim=True).numpy())
    filtered_then_pooled = embed_filter.transform(
        embed_filter.transform(states.numpy(), normalize=False).mean(0, keepdims=True)
        @ embed_filter.matrix  # back to d-space, so transform() sees the right width
    )
    np.testing.assert_allclose(pooled_then_filtered, filtered_then_pooled, rtol=1e-4, atol=1e-5)


def test_long_inputs_keep_the_prompt_and_respect_max_length(tiny_model: Path) -> None:
    encoder = _encoder(tiny_model, prompt="prompteol", max_length=40)
    long_text = "alpha beta gamma delta " * 50
    item = encoder._prepare([long_text], "")[0]
    suffix = encoder.tokenizer('" means in one word:"', add_special_tokens=False)["input_ids"]
    assert len(item.ids) <= 40
    assert item.ids[-len(suffix) :] == suffix
    echo = _encoder(tiny_model, prompt="echo", max_length=40)._prepare([long_text], "")[0]
    assert len(echo.ids) <= 40 and echo.end > echo.start


def test_instructions_differ_between_queries_and_documents(tiny_model: Path) -> None:
    encoder = _encoder(tiny_model, query_instruction="Find the claim: ")
    assert not np.allclose(
        encoder.encode_queries(TEXTS[:1]), encoder.encode_documents(TEXTS[:1], show_progress=False)
    )
    plain = _encoder(tiny_model)
    np.testing.assert_allclose(
        plain.encode_queries(TEXTS[:1]),
        plain.encode_documents(TEXTS[:1], show_progress=False),
        rtol=1e-5,
    )


def test_max_length_too_small_for_the_prompt(tiny_model: Path) -> None:
    encoder = _encoder(tiny_model, prompt="echo", max_length=16)
    with pytest.raises(RetrieverError, match="leaves no room for text"):
        encoder.encode_documents(["some text"], show_progress=False)


def test_tied_unembedding_is_the_input_embedding_matrix(tiny_model: Path) -> None:
    encoder = _encoder(tiny_model)
    w = encoder.unembedding()
    assert w.shape == (encoder.model.config.vocab_size, 32) and w.dtype == np.float32
    np.testing.assert_array_equal(w, encoder.model.get_input_embeddings().weight.detach().numpy())


def test_headless_model_needs_unembedding_from(tiny_model: Path, headless_model: Path) -> None:
    encoder = _encoder(headless_model)
    with pytest.raises(RetrieverError, match="--unembedding-from"):
        encoder.unembedding()
    borrowed = Encoder.load(str(headless_model), unembedding_from=str(tiny_model), dtype="float32")
    np.testing.assert_array_equal(borrowed.unembedding(), _encoder(tiny_model).unembedding())
    assert borrowed.describe()["unembedding_from"]["name"] == str(tiny_model)


def test_weights_hash_identifies_the_weights(tiny_model: Path, other_tiny_model: Path) -> None:
    first = resolve_model(str(tiny_model))
    assert first.weights_sha256 == resolve_model(str(tiny_model)).weights_sha256
    assert first.weights_sha256 != resolve_model(str(other_tiny_model)).weights_sha256


def test_unknown_model_and_bad_folder(tmp_path: Path) -> None:
    with pytest.raises(RetrieverError, match="unknown model 'no-such-org/no-such-model-"):
        resolve_model("no-such-org/no-such-model-0123")
    with pytest.raises(RetrieverError, match="has no config.json"):
        resolve_model(str(tmp_path))


def test_dtype_resolution() -> None:
    assert pick_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert pick_dtype("float16", torch.device("cpu")) == torch.float16
    with pytest.raises(RetrieverError, match="unknown dtype"):
        pick_dtype("int8", torch.device("cpu"))


def test_one_forward_pass_pools_every_way(tiny_model: Path) -> None:
    both = _encoder(tiny_model, prompt="prompteol").encode_poolings(
        TEXTS, ("mean", "last"), show_progress=False
    )
    for pooling in ("mean", "last"):
        alone = _encoder(tiny_model, prompt="prompteol", pooling=pooling)
        np.testing.assert_allclose(
            both[pooling], alone.encode_documents(TEXTS, show_progress=False), rtol=1e-5
        )
    with pytest.raises(RetrieverError, match="unknown pooling"):
        _encoder(tiny_model).encode_poolings(TEXTS, ("max",))
