"""The index's encoder for other libraries: a sentence-transformers folder and the
module it names."""
