"""The vocabulary of settings: the choices each takes and the defaults several steps share.

The settings themselves, with their checks and flags, are the spec's fields
(:mod:`retriever.core.spec`).
"""

from __future__ import annotations

# Prompt templates; "{text}" is replaced by the (truncated) input text.
PROMPTS: dict[str, str] = {
    "prompteol": 'This sentence : "{text}" means in one word:"',
    "echo": "Rewrite the following paragraph: {text}. The rewritten paragraph: {text}",
    "none": "{text}",
}
POOLINGS = ("mean", "last")
# The precision of an embedding store's raw vectors (retriever.store.embeddings): float16 halves the
# store; docs/builds.md measures its cosine to float32 and its nDCG@10.
STORE_PRECISIONS = ("float16", "float32")
DEFAULT_STORE_PRECISION = "float16"
DTYPES = ("auto", "float32", "bfloat16", "float16")
BANDS = ("edge", "head", "tail", "rand")
# Search methods: one retriever, or dense fused with another; the default comes first.
METHODS = ("dense", "sparse", "bm25", "dense+sparse", "dense+bm25")
# Hybrid fusions: reciprocal rank, or a weighted sum of min-max normalised scores.
FUSIONS = ("rrf", "weighted")
# Token-lens spaces: the raw embedding h, or the filtered vector F h the index stores.
SPACES = ("raw", "filtered")
# How a dense index stores each filtered vector (retriever.parts.dense.codes).
STORAGES = ("float32", "float16", "int8", "binary", "rabitq")
# RaBitQ codes: bits per dimension (FAISS's nb_bits), and the default.
RABITQ_BITS = (1, 8)
DEFAULT_RABITQ_BITS = 1
DEFAULT_STORAGE = "float32"
# Why, from the measured frontier (docs/frontier.md); --help shows it.
DEFAULT_STORAGE_REASON = (
    "float32 is the one storage whose scores are exact, so an index grown by add answers "
    "like a fresh build, and its batched Flat search is the fastest; on SciFact float16 and "
    "int8 kept its nDCG@10 within their intervals at tau 2-8 with half and a quarter of the "
    "bytes (use int8 when size matters, rabitq with --rescore when RAM does; "
    "docs/frontier.md)"
)
BINARY_CENTRES = ("documents", "zero")
# Where the dense vectors live (retriever.parts.dense.backends), the precision of the
# vectors kept to re-score candidates, and the Milvus collection an index names by default.
BACKENDS = ("faiss", "milvus")
RESCORE_PRECISIONS = ("int8", "float32")
DEFAULT_COLLECTION = "retriever"
# The lens space whose words a person is shown by default (`search --explain`): the one
# whose displayed top 10 holds a word of the text more often. Measured on 500 SciFact
# documents with the default model and filter (benchmarks/results/lens-display):
# displayed Hit@10 0.998 raw against 0.590 filtered.
DISPLAY_SPACE = "raw"
