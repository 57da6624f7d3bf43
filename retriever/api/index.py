"""One handle on an index path: build it, open it, grow and shrink it, describe it and
search it, each through the one library call that does it.

    Index.build(dataset, out, spec)  -> retriever.index.build.build_index
    index.add / index.delete          -> retriever.index.changes
    index.describe()                  -> the manifest (no model loads)
    index.searcher()                  -> retriever.search.searcher.Searcher.load
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retriever.core.spec import IndexSpec
from retriever.index.manifest import Manifest, current_manifest

# Describing an index reads its manifest only: the model's and FAISS's modules are
# imported by the calls that use them, so `retriever info` loads neither.
if TYPE_CHECKING:
    from retriever.encode.embedfilter import EmbedFilter
    from retriever.encode.encoder import Encoder
    from retriever.index.options import BuildOptions
    from retriever.search.searcher import Searcher


class Index:
    """An index path (a link to its current generation), as :meth:`build` wrote it.

    Every call reads the generation that is current at that moment: a handle held while
    another process adds documents sees them at its next call.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser().absolute()

    @classmethod
    def build(
        cls,
        dataset: str | Path | None,
        out: str | Path,
        spec: IndexSpec | None = None,
        options: BuildOptions | None = None,
        *,
        encoder: Encoder | None = None,
        embed_filter: EmbedFilter | None = None,
    ) -> Index:
        """Build the index of ``dataset`` at ``out`` (see
        :func:`~retriever.index.build.build_index`); returns its handle."""
        from retriever.index.build import build_index

        return cls(
            build_index(dataset, out, spec, options, encoder=encoder, embed_filter=embed_filter)
        )

    @classmethod
    def open(cls, path: str | Path) -> Index:
        """The handle of an existing index; its manifest is read and checked now."""
        index = cls(path)
        index.manifest()
        return index

    def manifest(self) -> Manifest:
        """The current generation's manifest."""
        return current_manifest(self.path)

    @property
    def spec(self) -> IndexSpec:
        """What the index is: the spec it was built by."""
        return self.manifest().spec

    def describe(self) -> dict[str, Any]:
        """The spec, generation, counts, bytes per part, model and filter (no model loads)."""
        return {"path": str(self.path), **self.manifest().describe()}

    def add(
        self,
        dataset: str | Path,
        *,
        upsert: bool = False,
        options: BuildOptions | None = None,
        encoder: Encoder | None = None,
    ) -> dict[str, int]:
        """Add a corpus's documents (see :func:`~retriever.index.changes.add_documents`)."""
        from retriever.index.changes import add_documents

        return add_documents(self.path, dataset, upsert=upsert, options=options, encoder=encoder)

    def delete(self, doc_ids: Iterable[str], *, use_gpu: Any = None) -> int:
        """Remove documents by id; returns how many were removed."""
        from retriever.index.changes import delete_documents

        return delete_documents(self.path, doc_ids, use_gpu=use_gpu)

    def searcher(self, **load: Any) -> Searcher:
        """A :class:`~retriever.search.searcher.Searcher` of the current generation;
        ``load`` are :meth:`Searcher.load`'s options."""
        from retriever.search.searcher import Searcher

        return Searcher.load(self.path, **load)
