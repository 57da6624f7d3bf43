"""Text -> pooled LLM embedding (the hidden state after the model's final norm).

Each input is the prompt template around the text, with an optional instruction in
front. Only the text is truncated (keeping its head and tail), so the prompt around it
always survives; ``echo`` pools over the second copy of the text alone.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from retriever.config import POOLINGS, PROMPTS, EncoderConfig
from retriever.errors import RetrieverError
from retriever.models import (
    DEFAULT_MODEL,
    ResolvedModel,
    load_model,
    load_unembedding,
    pick_device,
    pick_dtype,
    resolve_model,
    unembedding_matrix,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Prepared:
    """Token ids of one prompted input and the span ``[start, end)`` that mean pooling uses."""

    ids: list[int]
    start: int
    end: int


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
        self._template_parts = PROMPTS[config.prompt].split("{text}")
        self._pad_id = next(
            (t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id) if t is not None), 0
        )
        # Special tokens the tokenizer puts in front of every input (BOS for Llama-3,
        # nothing for SmolLM2 or Qwen).
        self._prefix_ids = list(tokenizer("", add_special_tokens=True)["input_ids"])

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
    ) -> Encoder:
        """Resolve and load ``model`` (bundled alias, local folder or hub id).

        With ``expected_weights_sha256`` the weights are hashed and compared before any
        of them is loaded: an index folder cannot make the process run other weights.
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
        torch_device = pick_device(device)
        torch_dtype = pick_dtype(dtype, torch_device)
        logger.info(
            "loading %s on %s as %s", model, torch_device, str(torch_dtype).removeprefix("torch.")
        )
        hf_model, tokenizer = load_model(resolved, torch_dtype, torch_device)
        borrowed = resolve_model(unembedding_from) if unembedding_from else None
        return cls(
            hf_model,
            tokenizer,
            resolved,
            config or EncoderConfig(),
            dtype=torch_dtype,
            device=torch_device,
            batch_size=batch_size,
            unembedding_from=borrowed,
        )

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
    ) -> dict[str, np.ndarray]:
        """Pool one forward pass several ways: ``{pooling: (n, d) float32}``.

        Mean and last-token pooling read the same hidden states, so a benchmark of both
        pays for one encoding of the corpus.
        """
        if isinstance(texts, str):
            raise TypeError("encode_* takes a sequence of texts, not one string")
        unknown = set(poolings) - set(POOLINGS)
        if unknown:
            raise RetrieverError(f"unknown pooling {sorted(unknown)}; choose from {POOLINGS}")
        instruction = self.config.query_instruction if queries else self.config.document_instruction
        return self._encode(texts, instruction, tuple(poolings), show_progress)

    def text_token_ids(self, texts: Sequence[str], *, queries: bool = False) -> list[list[int]]:
        """Each text's token ids as the model reads them: without the prompt, truncated."""
        instruction = self.config.query_instruction if queries else self.config.document_instruction
        _, budget = self._prompt_parts(instruction)
        text_ids = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        return [head_tail(list(ids), budget) for ids in text_ids]

    def _prompt_parts(self, instruction: str) -> tuple[list[list[int]], int]:
        """The prompt's token ids around each copy of the text, and the text's budget."""
        parts = [
            list(ids)
            for ids in self.tokenizer(
                [instruction + self._template_parts[0], *self._template_parts[1:]],
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
        return parts, budget

    def _prepare(self, texts: Sequence[str], instruction: str) -> list[_Prepared]:
        parts, budget = self._prompt_parts(instruction)
        text_ids = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        prepared = []
        for ids in text_ids:
            body = head_tail(list(ids), budget)
            sequence = self._prefix_ids + parts[0]
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
        self, texts: Sequence[str], instruction: str, poolings: tuple[str, ...], show_progress: bool
    ) -> dict[str, np.ndarray]:
        out = {p: np.zeros((len(texts), self.hidden_size), dtype=np.float32) for p in poolings}
        if not len(texts):
            return out
        prepared = self._prepare(texts, instruction)
        # Longest first: similar lengths share a batch (little padding) and a batch that
        # does not fit in memory fails at once rather than at the end.
        order = sorted(range(len(prepared)), key=lambda i: -len(prepared[i].ids))
        encoder = self.model.base_model
        with tqdm(total=len(texts), desc="encoding", unit="text", disable=not show_progress) as bar:
            for lo in range(0, len(order), self.batch_size):
                rows = order[lo : lo + self.batch_size]
                pooled = self._pool_batch(encoder, [prepared[i] for i in rows], poolings)
                for pooling, vectors in pooled.items():
                    out[pooling][rows] = vectors
                bar.update(len(rows))
        return out

    def _pool_batch(
        self, encoder: Any, batch: list[_Prepared], poolings: tuple[str, ...]
    ) -> dict[str, np.ndarray]:
        width = max(len(p.ids) for p in batch)
        # Right padding: with causal attention the real tokens never see the pads, and
        # position ids stay 0..n-1 without special handling.
        ids = torch.full((len(batch), width), self._pad_id, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        weights = {p: torch.zeros((len(batch), width), dtype=torch.float32) for p in poolings}
        for row, item in enumerate(batch):
            ids[row, : len(item.ids)] = torch.tensor(item.ids)
            attention[row, : len(item.ids)] = 1
            if "mean" in weights:
                weights["mean"][row, item.start : item.end] = 1.0
            if "last" in weights:
                weights["last"][row, len(item.ids) - 1] = 1.0
        hidden = encoder(
            input_ids=ids.to(self.device), attention_mask=attention.to(self.device)
        ).last_hidden_state.float()
        pooled = {}
        for pooling, weight in weights.items():
            weight = weight.to(self.device)
            vectors = (hidden * weight.unsqueeze(-1)).sum(dim=1) / weight.sum(dim=1, keepdim=True)
            pooled[pooling] = vectors.cpu().numpy()
        return pooled

    def describe(self) -> dict[str, Any]:
        """What the manifest records about the model and how text is encoded."""
        info: dict[str, Any] = {
            "name": self.resolved.name,
            "revision": self.resolved.revision,
            "weights_sha256": self.resolved.weights_sha256,
            "architecture": type(self.model).__name__,
            "hidden_size": self.hidden_size,
            "vocab_size": int(self.model.config.vocab_size),
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": self.device.type,
        }
        if self.unembedding_from is not None:
            info["unembedding_from"] = {
                "name": self.unembedding_from.name,
                "revision": self.unembedding_from.revision,
                "weights_sha256": self.unembedding_from.weights_sha256,
            }
        return info
