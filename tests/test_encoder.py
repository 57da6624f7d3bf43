from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from retriever.core.errors import RetrieverError
from retriever.core.spec import EncoderConfig, FilterSpec
from retriever.encode.embedfilter import EmbedFilter
from retriever.encode.encoder import Encoder, head_tail
from retriever.encode.models import pick_dtype, resolve_model

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


# Lengths from a few tokens to past --max-length 64, so batches pad and truncate.
MIXED = [
    "fox",
    "Vitamin D deficiency is associated with bone disease.",
    "Dense retrieval encodes queries and documents into vectors, " * 9,
    "Café, naïve, 東京 ☕",
    "Protein folding, gene expression and cell biology.",
    "The quick brown fox " * 3,
    "Unembedding matrices project hidden states onto the vocabulary.",
    "dog",
    "Rewrite the following paragraph: bone disease " * 5,
]


def _reference(encoder: Encoder, texts: list[str], pooling: str) -> np.ndarray:
    """One text at a time, unpadded, pooled in float64 from the token states."""
    vectors = []
    for item in encoder._prepare(texts, ""):
        with torch.inference_mode():
            states = encoder.model.base_model(input_ids=torch.tensor([item.ids])).last_hidden_state
        states = states[0].double()
        vectors.append(states[item.start : item.end].mean(0) if pooling == "mean" else states[-1])
    return torch.stack(vectors).numpy()


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.parametrize("prompt", ["prompteol", "echo"])
def test_batched_vectors_equal_a_plain_reference(tiny_model: Path, prompt: str) -> None:
    encoder = Encoder.load(
        str(tiny_model), EncoderConfig(prompt=prompt, max_length=64), dtype="float32", batch_size=3
    )
    pooled = encoder.encode_poolings(MIXED, ("mean", "last"), show_progress=False)
    for pooling in ("mean", "last"):
        reference = _reference(encoder, MIXED, pooling)
        assert pooled[pooling].dtype == np.float32
        assert _cosines(pooled[pooling], reference).min() >= 0.9999
        np.testing.assert_allclose(pooled[pooling], reference, rtol=1e-4, atol=1e-5)


def _out_of_memory_above(encoder: Encoder, limit: int, monkeypatch: pytest.MonkeyPatch) -> list:
    """Make batches of more than ``limit`` texts fail as a full GPU would; returns the
    batch sizes the encoder tried, in order."""
    base = encoder.model.base_model
    forward = base.forward
    tried = []

    def failing_forward(input_ids: torch.Tensor, **kwargs):
        tried.append(len(input_ids))
        if len(input_ids) > limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return forward(input_ids=input_ids, **kwargs)

    monkeypatch.setattr(base, "forward", failing_forward)
    return tried


def test_out_of_memory_halves_the_batch_for_the_rest_of_the_call(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    encoder = Encoder.load(str(tiny_model), dtype="float32", batch_size=8)
    unconstrained = encoder.encode_documents(MIXED, show_progress=False)
    tried = _out_of_memory_above(encoder, 2, monkeypatch)
    with caplog.at_level("WARNING", logger="retriever.encode.encoder"):
        constrained = encoder.encode_documents(MIXED, show_progress=False)
    np.testing.assert_allclose(constrained, unconstrained, rtol=1e-5, atol=1e-6)
    # 8 and 4 fail; the 9 texts then go in batches of 2, never a bigger one again.
    assert tried == [8, 4, 2, 2, 2, 2, 1]
    assert len([r for r in caplog.records if "out of" in r.getMessage()]) == 1
    assert encoder.batch_size == 8


def test_out_of_memory_with_one_text_is_refused(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    encoder = Encoder.load(str(tiny_model), dtype="float32", batch_size=4)
    _out_of_memory_above(encoder, 0, monkeypatch)
    with pytest.raises(RetrieverError, match="does not fit in cpu memory even alone"):
        encoder.encode_documents(MIXED, show_progress=False)


@pytest.mark.parametrize(
    ("native_bf16", "expected"), [(False, torch.float32), (True, torch.bfloat16)]
)
def test_dtype_auto_on_a_gpu_uses_bf16_only_where_it_is_native(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch, native_bf16: bool, expected: torch.dtype
) -> None:
    import retriever.encode.encoder

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(
        torch.cuda,
        "is_bf16_supported",
        lambda including_emulation=True: native_bf16 or including_emulation,
    )
    real_load = retriever.encode.encoder.load_model
    # The weights load on the CPU: only the choice of dtype is under test.
    monkeypatch.setattr(
        retriever.encode.encoder,
        "load_model",
        lambda resolved, dtype, device: real_load(resolved, dtype, torch.device("cpu")),
    )
    encoder = Encoder.load(str(tiny_model))
    assert encoder.device.type == "cuda"
    assert encoder.dtype == expected and encoder.model.dtype == expected


def test_prompt_is_tokenised_once_per_instruction(tiny_model: Path) -> None:
    encoder = _encoder(tiny_model, query_instruction="Find the claim: ")
    tokenizer = encoder.tokenizer
    calls: list = []

    class Counting:
        def __call__(self, texts, **kwargs):
            calls.append(list(texts) if isinstance(texts, list) else [texts])
            return tokenizer(texts, **kwargs)

        def __getattr__(self, name: str):
            return getattr(tokenizer, name)

    encoder.tokenizer = Counting()
    for text in TEXTS:
        encoder.encode_queries([text])
        encoder.encode_documents([text], show_progress=False)
    encoder.text_token_ids(TEXTS, queries=True)
    suffix = '" means in one word:"'
    assert len([c for c in calls if suffix in c]) == 2  # the query and the document prompt
    assert len(calls) == 2 + 2 * len(TEXTS) + 1  # otherwise, the texts only


def test_a_swapped_config_takes_effect(tiny_model: Path) -> None:
    encoder = _encoder(tiny_model, prompt="prompteol")
    encoder.encode_documents(TEXTS, show_progress=False)
    encoder.config = EncoderConfig(prompt="echo", max_length=64)
    np.testing.assert_allclose(
        encoder.encode_documents(TEXTS, show_progress=False),
        _encoder(tiny_model, prompt="echo", max_length=64).encode_documents(
            TEXTS, show_progress=False
        ),
        rtol=1e-5,
        atol=1e-6,
    )


def test_pooling_makes_no_float32_copy_of_the_hidden_states(tiny_model: Path) -> None:
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    encoder = Encoder.load(str(tiny_model), dtype="bfloat16", batch_size=3)
    base = encoder.model.base_model

    class Outside(TorchDispatchMode):
        """Every tensor made outside the model's forward: (dtype, shape)."""

        def __init__(self) -> None:
            super().__init__()
            self.inside = False
            self.made: list = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if not self.inside:
                self.made += [(t.dtype, t.shape) for t in tree_leaves(out) if torch.is_tensor(t)]
            return out

    mode = Outside()
    base.register_forward_pre_hook(lambda *_: setattr(mode, "inside", True))
    base.register_forward_hook(lambda *_: setattr(mode, "inside", False))
    with mode:
        vectors = encoder.encode_poolings(MIXED, ("mean", "last"), show_progress=False)
    assert vectors["mean"].dtype == np.float32 and np.isfinite(vectors["mean"]).all()
    # (B, T, d) float32 would be a copy of the states; (B, poolings, d) is the result.
    copies = [s for d, s in mode.made if d == torch.float32 and len(s) == 3 and s[1] > 2]
    assert mode.made and not copies


def test_pooled_vectors_reach_the_host_once_per_call(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    encoder = _encoder(tiny_model)
    encoder.batch_size = 1
    real_cpu = torch.Tensor.cpu
    moved = []

    def counting_cpu(self: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        moved.append(tuple(self.shape))
        return real_cpu(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "cpu", counting_cpu)
    encoder.encode_poolings(MIXED, ("mean", "last"), show_progress=False)
    assert len(moved) == 1  # one copy (one wait for the device), not one per batch
