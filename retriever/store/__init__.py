"""The embedding store: encoded corpora kept in shards, written resumably, on Ray or
in slices, paced and sized against the disk."""
