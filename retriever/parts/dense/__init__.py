"""The dense part: FAISS indexes, how each vector is coded (storage), FAISS on GPUs,
and Milvus, behind one backend interface."""
