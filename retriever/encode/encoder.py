"""Text -> pooled LLM embedding (the hidden state after the model's final norm).

Each input is the prompt template around the text, with an optional instruction in
front. Only the text is truncated (keeping its head and tail), so the prompt around it
always survives; ``echo`` pools over the second copy of the text alone.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from retriever.core.config import POOLINGS, PROMPTS
from retriever.core.errors import RetrieverError
from retriever.core.progress import progress_bar
from retriever.core.spec import DEFAULT_MODEL, EncoderConfig
from retriever.encode.models import (
    ResolvedModel,
    cache_dir,
    load_model,
    load_unembedding,
    pick_device,
    pick_dtype,
    resolve_model,
    unembedding_matrix,
)

logger = logging.getLogger(__name__)

# Pooled rows kept on the device before one copy to the host.
_HOST_ROWS = 4096


@dataclass(frozen=True)
class _Prepared:
    """Token ids of one prompted input and the span ``[start, end)`` that mean pooling uses."""

    ids: list[int]
    start: int
    end: int


def encoder_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """:func:`pick_dtype`, except that ``auto`` on a GPU without native bf16 is float32.

    Pre-Ampere GPUs (T4, V100) run bf16 only emulated, far slower than float32. float16
    is not the fallback: its range (65504) overflows on the outlier activations of some
    LLMs (Gemma, Qwen2), which would fill an index with inf and NaN without a word;
    ``--dtype float16`` remains a choice for a model known to stay in range.
    """
    chosen = pick_dtype(dtype, device)
    if (
        dtype == "auto"
        and chosen == torch.bfloat16
        and device.type == "cuda"
        and not torch.cuda.is_bf16_supported(including_emulation=False)
    ):
        logger.info(
            "this GPU has no native bfloat16: encoding in float32 (--dtype float16 is faster "
            "where the model's activations fit its range)"
        )
        return torch.float32
    return chosen


def _runtime_placement(
    runtime: str, dtype: str, device: str | None
) -> tuple[torch.device, torch.dtype]:
    """The torch device and dtype to load the model in for ``runtime``: ONNX Runtime
    runs a float32 export on the CPU (``auto`` picks that; anything else is refused)."""
    if runtime not in ("torch", "onnx"):
        raise RetrieverError(f"unknown runtime {runtime!r}; choose torch or onnx")
    if runtime == "torch":
        torch_device = pick_device(device)
        return torch_device, encoder_dtype(dtype, torch_device)
    if device not in (None, "cpu") or dtype not in ("auto", "float32"):
        raise RetrieverError(
            f"--runtime onnx runs float32 on the CPU, not {dtype} on {device or 'cpu'}: "
            "drop --dtype/--device, or use --runtime torch"
        )
    return torch.device("cpu"), torch.float32


def head_tail(ids: list[int], budget: int) -> list[int]:
    """Keep the first ``ceil(budget/2)`` and the last ``floor(budget/2)`` tokens."""
    if len(ids) <= budget:
        return ids
    tail = budget // 2
    return ids[: budget - tail] + (ids[len(ids) - tail :] if tail else [])


class Encoder:
    """Encodes queries and documents into float32 ``(n, d)`` pooled embeddings.

    Build one with :meth:`Encoder.load`; embeddings are *not* normalised here, because
    EmbedFilter projects the raw pooled vector and normalisation follows the filter.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        resolved: ResolvedModel,
        config: EncoderConfig,
        *,
        dtype: torch.dtype,
        device: torch.device,
        batch_size: int = 16,
        unembedding_from: ResolvedModel | None = None,
        forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        if batch_size < 1:
            raise RetrieverError(f"--batch-size must be at least 1, got {batch_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.resolved = resolved
        self.config = config
        self.dtype = dtype
        self.device = device
        self.batch_size = batch_size
        self.unembedding_from = unembedding_from
        # The transformer's forward pass in another runtime (retriever.encode.onnx_runtime), or
        # None: the model's own, in torch.
        self._forward = forward
        self._pad_id = next(
            (t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id) if t is not None), 0
        )
        # Special tokens the tokenizer puts in front of every input (BOS for Llama-3,
        # nothing for SmolLM2 or Qwen).
        self._prefix_ids = list(tokenizer("", add_special_tokens=True)["input_ids"])
        # Decoder models build a key/value cache unless told not to (those without one
        # take no such argument).
        has_cache = getattr(getattr(model, "config", None), "use_cache", None) is not None
        self._no_cache = {"use_cache": False} if has_cache else {}
        # Tokenised prompts by (config, instruction): a single query per call must not
        # pay for tokenising the prompt again. The config is part of the key because
        # callers swap ``encoder.config`` (an index's own settings, a benchmark's prompts).
        self._prompts: dict[tuple[EncoderConfig, str], tuple[list[list[int]], int]] = {}

    @classmethod
    def load(
        cls,
        model: str = DEFAULT_MODEL,
        config: EncoderConfig | None = None,
        *,
        dtype: str = "auto",
        device: str | None = None,
        batch_size: int = 16,
        revision: str | None = None,
        unembedding_from: str | None = None,
        expected_weights_sha256: str | None = None,
        expected_by: str = "the index",
        runtime: str = "torch",
    ) -> Encoder:
        """Resolve and load ``model`` (bundled alias, local folder or hub id).

        With ``expected_weights_sha256`` the weights are hashed and compared before any
        of them is loaded: an index folder cannot make the process run other weights.
        ``runtime="onnx"`` runs the transformer in ONNX Runtime, float32 on the CPU
        (:mod:`retriever.encode.onnx_runtime`).
        """
        if batch_size < 1:
            raise RetrieverError(f"--batch-size must be at least 1, got {batch_size}")
        resolved = resolve_model(model, revision)
        if (
            expected_weights_sha256 is not None
            and resolved.weights_sha256 != expected_weights_sha256
        ):
            raise RetrieverError(
                f"{expected_by} was built with weights sha256 {expected_weights_sha256[:12]}..., "
                f"but {model!r} has weights {resolved.weights_sha256[:12]}...: its embeddings "
                "would not be comparable. Search with the model that built the index (--model "
                "PATH to a copy of it), or rebuild the index"
            )
        torch_device, torch_dtype = _runtime_placement(runtime, dtype, device)
        logger.info(
            "loading %s on %s as %s", model, torch_device, str(torch_dtype).removeprefix("torch.")
        )
        hf_model, tokenizer = load_model(resolved, torch_dtype, torch_device)
        borrowed = resolve_model(unembedding_from) if unembedding_from else None
        forward = None
        if runtime == "onnx":
            from retriever.encode.onnx_runtime import onnx_forward

            forward = onnx_forward(
                hf_model.base_model, resolved.weights_sha256, cache_dir() / "onnx"
            )
        return cls(
            hf_model,
            tokenizer,
            resolved,
            config or EncoderConfig(),
            dtype=torch_dtype,
            device=torch_device,
            batch_size=batch_size,
            unembedding_from=borrowed,
            forward=forward,
        )

    @property
    def runtime(self) -> str:
        """``torch``, or ``onnx`` when ONNX Runtime runs the transformer."""
        return "torch" if self._forward is None else "onnx"

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    def unembedding(self) -> np.ndarray:
        """The ``V x d`` unembedding matrix (float32) that EmbedFilter is built from."""
        if self.unembedding_from is not None:
            weight = load_unembedding(self.unembedding_from)
        else:
            weight = unembedding_matrix(self.model)
        if weight.shape[1] != self.hidden_size:
            source = self.unembedding_from.name if self.unembedding_from else self.resolved.name
            raise RetrieverError(
                f"the unembedding matrix of {source!r} has width {weight.shape[1]}, but the "
                f"encoder's hidden size is {self.hidden_size}: they must come from the same "
                "model family"
            )
        return weight.numpy()

    def encode_documents(self, texts: Sequence[str], *, show_progress: bool = True) -> np.ndarray:
        return self.encode_poolings(texts, (self.config.pooling,), show_progress=show_progress)[
            self.config.pooling
        ]

    def encode_queries(self, texts: Sequence[str], *, show_progress: bool = False) -> np.ndarray:
        return self.encode_poolings(
            texts, (self.config.pooling,), queries=True, show_progress=show_progress
        )[self.config.pooling]

    def encode_poolings(
        self,
        texts: Sequence[str],
        poolings: Sequence[str],
        *,
        queries: bool = False,
        show_progress: bool = True,
        on_batch: Callable[[int], object] | None = None,
    ) -> dict[str, np.ndarray]:
        """Pool one forward pass several ways: ``{pooling: (n, d) float32}``.

        Mean and last-token pooling read the same hidden states, so a benchmark of both
        pays for one encoding of the corpus. ``on_batch(n)`` follows each batch of ``n``
        texts (a caller's own progress bar).
        """
        if isinstance(texts, str):
            raise TypeError("encode_* takes a sequence of texts, not one string")
        unknown = set(poolings) - set(POOLINGS)
        if unknown:
            raise RetrieverError(f"unknown pooling {sorted(unknown)}; choose from {POOLINGS}")
        instruction = self.config.query_instruction if queries else self.config.document_instruction
        return self._encode(texts, instruction, tuple(poolings), show_progress, on_batch)

    def text_token_ids(self, texts: Sequence[str], *, queries: bool = False) -> list[list[int]]:
        """Each text's token ids as the model reads them: without the prompt, truncated."""
        instruction = self.config.query_instruction if queries else self.config.document_instruction
        _, budget = self._prompt_parts(instruction)
        text_ids = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        return [head_tail(list(ids), budget) for ids in text_ids]

    def _prompt_parts(self, instruction: str) -> tuple[list[list[int]], int]:
        """The prompt's token ids around each copy of the text, and the text's budget."""
        key = (self.config, instruction)
        if key in self._prompts:
            return self._prompts[key]
        template_parts = PROMPTS[self.config.prompt].split("{text}")
        parts = [
            list(ids)
            for ids in self.tokenizer(
                [instruction + template_parts[0], *template_parts[1:]],
                add_special_tokens=False,
            )["input_ids"]
        ]
        copies = len(parts) - 1
        fixed = len(self._prefix_ids) + sum(len(p) for p in parts)
        budget = (self.config.max_length - fixed) // copies
        if budget < 1:
            raise RetrieverError(
                f"--max-length {self.config.max_length} leaves no room for text: the "
                f"{self.config.prompt!r} prompt alone takes {fixed} tokens"
            )
        self._prompts[key] = parts, budget
        return parts, budget

    def _prepare(self, texts: Sequence[str], instruction: str) -> list[_Prepared]:
        parts, budget = self._prompt_parts(instruction)
        text_ids = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        head = self._prefix_ids + parts[0]
        prepared = []
        for ids in text_ids:
            body = head_tail(list(ids), budget)
            sequence = head
            for part in parts[1:]:
                copy_start = len(sequence)
                sequence = sequence + body + part
            if self.config.prompt == "echo":
                # Echo embeds the second copy, which has read the whole text once already.
                start, end = copy_start, copy_start + len(body)
            else:
                start, end = 0, len(sequence)
            prepared.append(_Prepared(sequence, start, end))
        return prepared

    @torch.inference_mode()
    def _encode(
        self,
        texts: Sequence[str],
        instruction: str,
        poolings: tuple[str, ...],
        show_progress: bool,
        on_batch: Callable[[int], object] | None = None,
    ) -> dict[str, np.ndarray]:
        out = {p: np.zeros((len(texts), self.hidden_size), dtype=np.float32) for p in poolings}
        if not len(texts):
            return out
        prepared = self._prepare(texts, instruction)
        # Longest first: similar lengths share a batch (little padding) and a batch that
        # does not fit in memory fails at once rather than at the end.
        order = np.argsort([-len(p.ids) for p in prepared], kind="stable")
        encoder = self.model.base_model
        size = self.batch_size
        # Pooled batches stay on the device until _HOST_ROWS rows are due: moving each
        # batch to the host would wait for the device every batch.
        pending: list[torch.Tensor] = []
        on_host = done = 0
        with progress_bar(
            total=len(texts), desc="encoding", unit="text", show=show_progress
        ) as bar:
            while done < len(order):
                batch = [prepared[i] for i in order[done : done + size]]
                try:
                    pooled = self._pool_batch(encoder, batch, poolings)
                # torch.cuda's name is the one torch 2.4 has; from 2.5 on it is the
                # device-neutral torch.OutOfMemoryError.
                except torch.cuda.OutOfMemoryError:
                    pooled = None
                # Outside the except block, so that the failed batch's tensors are freed.
                if pooled is None:
                    size = self._smaller_batch(size, batch)
                    continue
                pending.append(torch.stack([pooled[p] for p in poolings], dim=1))
                done += len(batch)
                bar.update(len(batch))
                if on_batch is not None:
                    on_batch(len(batch))
                if done - on_host >= _HOST_ROWS or done == len(order):
                    vectors = torch.cat(pending).cpu().numpy()
                    for j, pooling in enumerate(poolings):
                        out[pooling][order[on_host:done]] = vectors[:, j]
                    pending, on_host = [], done
        return out

    def _smaller_batch(self, size: int, batch: list[_Prepared]) -> int:
        """Half of ``size`` after ``batch`` ran out of memory; refuses below one text."""
        if size == 1:
            raise RetrieverError(
                f"one text of {len(batch[0].ids)} tokens does not fit in {self.device.type} "
                f"memory even alone: lower --max-length (now {self.config.max_length}), pick "
                "a smaller --dtype, or free the device"
            )
        if size == self.batch_size:
            logger.warning(
                "out of %s memory with batches of %d texts: halving the batch until it fits, "
                "for the rest of this call (a smaller --batch-size avoids the retries)",
                self.device.type,
                size,
            )
        return size // 2

    def _pool_batch(
        self, encoder: Any, batch: list[_Prepared], poolings: tuple[str, ...]
    ) -> dict[str, torch.Tensor]:
        """``{pooling: (len(batch), d) float32}`` on the encoder's device."""
        ids, spans = self._batch_arrays(batch)
        ids_t, spans_t = self._to_device(ids), self._to_device(spans)
        lengths, start, end = spans_t.unbind(dim=1)
        positions = torch.arange(ids.shape[1], device=self.device)
        # Right padding: with causal attention the real tokens never see the pads, and
        # position ids stay 0..n-1 without special handling.
        attention = (positions < lengths[:, None]).long()
        if self._forward is not None:
            hidden = self._forward(ids_t, attention)
        else:
            # No key/value cache: nothing reads it, and building it costs time.
            hidden = encoder(
                input_ids=ids_t, attention_mask=attention, **self._no_cache
            ).last_hidden_state
        weights = []
        for pooling in poolings:
            if pooling == "mean":
                span = (positions >= start[:, None]) & (positions < end[:, None])
                # Weights of 1/n rather than a sum of ones: the pooled value stays within the
                # range of the states, where a float16 sum of long inputs could overflow.
                weights.append(span / (end - start)[:, None])
            else:
                weights.append((positions == lengths[:, None] - 1).float())
        # One (B, P, T) x (B, T, d) product in the model's dtype: matmul kernels accumulate
        # in float32, and only the small pooled result is converted, never the states.
        pooled = torch.bmm(torch.stack(weights, dim=1).to(hidden.dtype), hidden).float()
        return {pooling: pooled[:, j] for j, pooling in enumerate(poolings)}

    def _batch_arrays(self, batch: list[_Prepared]) -> tuple[np.ndarray, np.ndarray]:
        """Right-padded ``(B, T)`` token ids, and ``(B, 3)`` rows of (length, start, end)."""
        lengths = np.fromiter((len(p.ids) for p in batch), dtype=np.int64, count=len(batch))
        ids = np.full((len(batch), int(lengths.max())), self._pad_id, dtype=np.int64)
        # A row-major boolean mask visits row 0's real tokens, then row 1's, ...: the order
        # of the concatenated ids.
        ids[np.arange(ids.shape[1]) < lengths[:, None]] = np.fromiter(
            itertools.chain.from_iterable(p.ids for p in batch),
            dtype=np.int64,
            count=int(lengths.sum()),
        )
        spans = np.fromiter(
            itertools.chain.from_iterable((len(p.ids), p.start, p.end) for p in batch),
            dtype=np.int64,
            count=3 * len(batch),
        ).reshape(len(batch), 3)
        return ids, spans

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(array)
        if self.device.type == "cuda":
            # From page-locked memory the copy runs asynchronously, overlapping the
            # device's work on the previous batch.
            tensor = tensor.pin_memory()
        return tensor.to(self.device, non_blocking=True)

    def describe(self) -> dict[str, Any]:
        """What the manifest records about the model and how text is encoded."""
        info: dict[str, Any] = {
            **self.resolved.identity(),
            "architecture": type(self.model).__name__,
            "hidden_size": self.hidden_size,
            "vocab_size": int(self.model.config.vocab_size),
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": self.device.type,
        }
        if self.unembedding_from is not None:
            info["unembedding_from"] = self.unembedding_from.identity()
        return info
