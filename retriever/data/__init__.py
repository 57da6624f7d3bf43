"""Datasets in: BEIR folders and JSONL corpora, and BEIR datasets by name (downloaded
once into the cache)."""
