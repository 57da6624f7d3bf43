"""Shared fixtures: tiny random models saved as local folders, and small corpora.

Nothing is downloaded: tokenizers are trained on the fly and weights are random, so the
full load path (resolve -> hash -> transformers) runs exactly as for a real model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from retriever.core.cache import cache_dir

ROOT = Path(__file__).resolve().parents[1]
# BEIR SciFact as a local folder: $SCIFACT, else the development machines' copy beside the
# checkout. A user's machine has neither, and the tests that read it skip there.
SCIFACT = Path(os.environ.get("SCIFACT") or ROOT.parent / "shared" / "datasets" / "scifact")
# The small BEIR-layout corpus that ships with the repository (the quickstart's).
QUICKSTART = ROOT / "examples" / "quickstart"
# CI sets it (.ci/run): a missing outside requirement (SciFact, the browser) then fails.
STRICT = os.environ.get("RETRIEVER_TESTS_STRICT") == "1"


def require(what: str, present: bool, how: str) -> None:
    """Skip, saying why, when something from outside the repository is missing.

    Under ``RETRIEVER_TESTS_STRICT=1`` (CI) the test fails instead, so that a CI machine
    that lost its browser or its SciFact copy cannot pass by skipping.
    """
    if present:
        return
    message = f"{what}: {how}"
    if STRICT:
        pytest.fail(f"{message} (RETRIEVER_TESTS_STRICT=1 makes this a failure)")
    pytest.skip(message)


def require_scifact() -> Path:
    """The local SciFact folder, or a skip saying how to provide one."""
    require(
        f"BEIR SciFact is not at {SCIFACT}",
        (SCIFACT / "corpus.jsonl").is_file(),
        "set SCIFACT to a folder holding it (corpus.jsonl, queries.jsonl, qrels/test.tsv)",
    )
    return SCIFACT


TRAINING_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Dense retrieval encodes queries and documents into vectors.",
    "Protein folding, gene expression and cell biology.",
    "Vitamin D deficiency is associated with bone disease.",
    "This sentence means in one word: rewrite the following paragraph.",
    "Unembedding matrices project hidden states onto the vocabulary.",
    "Café, naïve, 東京, and emoji ☕ are unicode text.",
] * 20


def save_tiny_model(folder: Path, *, seed: int, with_head: bool = True, tied: bool = True) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaModel, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(TRAINING_TEXTS, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=tied,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config) if with_head else LlamaModel(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# The cache the user has (converted default model, embeddings), read before tests move it.
USER_CACHE = cache_dir()


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory):
    """Keep tests' hash memos and embeddings out of the user's cache.

    Session-scoped so that it is in force before any module-scoped fixture runs. Slow
    tests opt back into ``USER_CACHE``, where the converted default model lives.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RETRIEVER_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        yield


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tied 2-layer Llama with hidden size 32, as a local model folder."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny-model"), seed=0)


@pytest.fixture(scope="session")
def other_tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Same architecture and tokenizer as ``tiny_model``, different weights."""
    return save_tiny_model(tmp_path_factory.mktemp("other-tiny-model"), seed=1)


@pytest.fixture(scope="session")
def headless_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untied base model without an LM head, like an embedding-only checkpoint."""
    return save_tiny_model(
        tmp_path_factory.mktemp("headless-model"), seed=2, with_head=False, tied=False
    )


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return path


TOY_DOCS = [
    {
        "_id": "d1",
        "title": "Vitamin D",
        "text": "Vitamin D deficiency is associated with bone disease.",
    },
    {"_id": "d2", "title": "Foxes", "text": "The quick brown fox jumps over the lazy dog."},
    {"_id": "d3", "title": "Retrieval", "text": "Dense retrieval encodes queries into vectors."},
    {"_id": "d4", "title": "Proteins", "text": "Protein folding and gene expression in cells."},
    {"_id": "d5", "title": "", "text": "Unembedding matrices project hidden states."},
    {
        "_id": "d6",
        "title": "Unicode",
        "text": "Café, naïve, 東京 ☕.",
        "metadata": {"lang": "mixed"},
    },
]


@pytest.fixture
def toy_corpus(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "docs.jsonl", TOY_DOCS)


_WORDS = sorted({w.strip(".,:") for t in TRAINING_TEXTS[:7] for w in t.split()} - {""})


def synthetic_docs(n: int, *, seed: int = 0, prefix: str = "s") -> list[dict]:
    """``n`` documents of random words from the tokenizer's training texts."""
    import random

    rng = random.Random(seed)
    return [
        {
            "_id": f"{prefix}{i}",
            "title": " ".join(rng.choices(_WORDS, k=2)),
            "text": " ".join(rng.choices(_WORDS, k=rng.randint(4, 14))),
        }
        for i in range(n)
    ]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``gpu`` tests run where faiss-gpu sees a GPU, and say why they are skipped elsewhere."""
    from retriever.parts.dense.gpu import gpu_count

    if gpu_count():
        return
    skip = pytest.mark.skip(reason="needs a GPU that faiss sees (faiss-gpu on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def write_gguf(path: Path, architecture: str = "llama", *, file_type: int | None = None) -> Path:
    """A minimal GGUF file: one tensor, a token list before the file type (a header reader
    must skip it), and ``general.file_type`` when given."""
    import numpy as np
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), architecture)
    writer.add_block_count(1)
    writer.add_token_list(["a", "bb", "ccc"])
    if file_type is not None:
        writer.add_file_type(file_type)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
