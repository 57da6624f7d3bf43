"""The parts an index folder holds: the docstore, the key-token sparse index, BM25,
and the dense part (``dense/``)."""
