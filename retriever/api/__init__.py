"""The public handle on one index path (:class:`retriever.api.index.Index`)."""
