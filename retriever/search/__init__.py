"""Searching an index: the Searcher, its one result type, and hybrid fusion."""
