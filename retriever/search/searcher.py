"""Load an index folder and answer queries with the same model and filter that built it.

An index answers with up to three retrievers, as its manifest says it holds them: the
dense FAISS index, the key-token sparse index and BM25; a hybrid method fuses dense with
one of the other two per query.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import unicodedata
from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from retriever.core.config import DISPLAY_SPACE, METHODS
from retriever.core.errors import RetrieverError
from retriever.core.generations import ReaderHold
from retriever.core.spec import SearchParams
from retriever.core.threads import pthread_blas
from retriever.encode.embedfilter import EmbedFilter
from retriever.encode.encoder import Encoder
from retriever.encode.lens import AlignedToken, TokenLens
from retriever.index.integrity import check_files_at_load
from retriever.index.manifest import Manifest, load_encoder_for, read_manifest
from retriever.parts.bm25 import BM25_DIR, BM25Index
from retriever.parts.dense.backends import DenseBackend, open_backend
from retriever.parts.dense.gpu import GpuSetting
from retriever.parts.docstore import DOCSTORE_DIR, DocStore, shown_id
from retriever.parts.sparse import SPARSE_DIR, KeyTokenIndex
from retriever.search.fusion import ranked_lists
from retriever.search.results import Hit, Ranking, Results, results_from_lists

logger = logging.getLogger(__name__)

# Candidates taken from each retriever before fusing (at least k).
FUSION_DEPTH = 100


def has_visible_text(text: str) -> bool:
    """Whether ``text`` holds a character that is not blank, a control or a format
    character (a query of NULs or zero-width spaces says nothing to search for)."""
    return any(not unicodedata.category(char).startswith(("C", "Z")) for char in text)


def check_queries(queries: Sequence[str]) -> None:
    """Every query must be text with something in it, whatever method searches it."""
    for query in queries:
        if not isinstance(query, str) or not query.strip():
            raise RetrieverError("empty query: give some text to search for")
        if not has_visible_text(query):
            raise RetrieverError(
                "empty query: it holds only control, formatting or blank characters; give "
                "some text to search for"
            )
        try:
            query.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise RetrieverError(
                f"the query holds an invalid Unicode character (U+{ord(query[exc.start]):04X} "
                f"at character {exc.start + 1}); give valid UTF-8 text"
            ) from None


class Searcher:
    """Searches one index folder. Build it with :meth:`Searcher.load`."""

    def __init__(
        self,
        folder: Path,
        manifest: Manifest,
        encoder: Encoder,
        embed_filter: EmbedFilter,
        index: DenseBackend | None,
        docstore: DocStore,
        *,
        sparse: KeyTokenIndex | None = None,
        bm25: BM25Index | None = None,
    ) -> None:
        self.folder = folder
        self.manifest = manifest
        self.encoder = encoder
        self.filter = embed_filter
        self.index = index
        self.docstore = docstore
        self.sparse = sparse
        self.bm25 = bm25
        # A GPU FAISS index must not be searched from two threads at once; a CPU one may.
        # Asked here, while one thread holds the searcher: the backend places its index
        # (on a GPU or not) on the first question.
        self._dense_guard: contextlib.AbstractContextManager[Any] = (
            threading.Lock() if index is not None and index.on_gpu else contextlib.nullcontext()
        )
        self._numpy_blas = pthread_blas()
        self._closed = False

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        model: str | None = None,
        dtype: str | None = None,
        device: str | None = None,
        batch_size: int = 32,
        use_gpu: GpuSetting = None,
        search: SearchParams | None = None,
        encoder: Encoder | None = None,
    ) -> Searcher:
        """Open an index and load the model that built it.

        ``path`` is resolved once: every part is read from the one generation it points to
        at that moment, which stays readable until this searcher is closed. Every part is
        checked against the manifest before the model loads; the model's weights must hash
        to the manifest's ``weights_sha256`` before any of them is loaded. ``model``
        overrides where the model is found; ``dtype`` defaults to the one the index was
        built with; ``search`` (nprobe, ef_search, and rescore M: re-score M x k
        candidates, on an index built with ``--rescore``) overrides the index's search
        defaults, each that is set.
        ``encoder`` is an already loaded model to use instead of loading one (a benchmark
        searches many indexes of one model); its weights and settings must be the ones the
        index was built with.
        """
        folder, hold = ReaderHold.resolve(Path(path).expanduser())
        try:
            manifest = read_manifest(folder)
            embed_filter = EmbedFilter.load(folder)
            if manifest.filter != embed_filter.describe():
                raise RetrieverError(
                    f"{folder} is inconsistent: its manifest describes another filter than "
                    "filter.json (kept rows, size or spec); rebuild the index"
                )
            dims = {"filter": embed_filter.dim, "manifest": manifest.dim}
            index = None
            if manifest.backend is not None:
                index = open_backend(folder, manifest.backend, manifest.dim, use_gpu=use_gpu)
                dims[f"{index.kind} index"] = index.dim
            if len(set(dims.values())) > 1:
                found = ", ".join(f"the {name} {dim}" for name, dim in dims.items())
                raise RetrieverError(f"{folder} is inconsistent: dimensions differ ({found})")
            sparse = KeyTokenIndex.load(folder / SPARSE_DIR) if manifest.spec.sparse else None
            bm25 = BM25Index.load(folder / BM25_DIR) if manifest.spec.bm25 else None
            docstore = DocStore.open(folder / DOCSTORE_DIR)
            _check_counts(folder, manifest, index, sparse, bm25, docstore)
            check_files_at_load(folder, manifest)  # a well-formed part from elsewhere
            if index is not None:
                given = search or SearchParams()
                index.set_search_params(given.over(manifest.spec.dense.search).faiss())
            if encoder is None:
                encoder = load_encoder_for(
                    manifest, folder, model=model, dtype=dtype, device=device, batch_size=batch_size
                )
            else:
                _check_encoder(folder, manifest, encoder)
            if encoder.hidden_size != manifest.model_dim:
                raise RetrieverError(
                    f"{folder} expects hidden size {manifest.model_dim}, the model "
                    f"has {encoder.hidden_size}"
                )
        except BaseException:
            hold.release()
            raise
        searcher = cls(
            folder, manifest, encoder, embed_filter, index, docstore, sparse=sparse, bm25=bm25
        )
        searcher._hold = hold
        return searcher

    def __len__(self) -> int:
        # From the manifest (checked against every part on load): no LMDB read per query.
        return self.manifest.count

    @property
    def parts(self) -> tuple[str, ...]:
        """The retrievers this index holds, among dense, sparse and bm25."""
        held = {"dense": self.index, "sparse": self.sparse, "bm25": self.bm25}
        return tuple(part for part, found in held.items() if found is not None)

    @property
    def methods(self) -> tuple[str, ...]:
        """The search methods this index can answer, its default first."""
        return tuple(m for m in METHODS if set(m.split("+")) <= set(self.parts))

    def _check_method(self, method: str | None) -> str:
        return check_method(method, self.parts, self.folder)

    @cached_property
    def lens(self) -> TokenLens:
        """The token lens of this index's model and filter."""
        return TokenLens(self.encoder.unembedding(), self.filter, self.encoder.tokenizer)

    def _check_open(self) -> None:
        # close() let go of the docstore, the backend and the generation: refuse here in
        # one line, not with an AttributeError from inside a part.
        if self._closed:
            raise RetrieverError(
                f"this searcher is closed ({self.folder}): load the index again to search it"
            )

    def encode_queries(self, queries: Sequence[str]) -> np.ndarray:
        """Raw pooled query embeddings (before the filter)."""
        self._check_open()
        check_queries(queries)
        return self.encoder.encode_queries(list(queries))

    def embed_queries(self, queries: Sequence[str]) -> np.ndarray:
        """Filtered, normalised query vectors, exactly as the index's documents were made."""
        return self.filter.transform(self.encode_queries(queries))

    def search(
        self,
        query: str,
        k: int = 10,
        *,
        method: str | None = None,
        fusion: str = "rrf",
        dense_weight: float = 0.5,
        sparse_query_tokens: int | None = None,
    ) -> Ranking:
        """The ``k`` best documents for ``query``, best first: a sequence of :class:`Hit`.

        ``method`` is one of :attr:`methods` (default: dense when the index has it);
        hybrids fuse by ``fusion`` (``rrf`` or ``weighted``, where ``dense_weight`` is the
        dense share of the sum of min-max normalised scores). ``sparse_query_tokens``
        overrides the index's number M of aligned tokens added to a sparse query.
        """
        return self.rank(
            [query],
            k,
            method=method,
            fusion=fusion,
            dense_weight=dense_weight,
            sparse_query_tokens=sparse_query_tokens,
        ).rankings[0]

    def batch_search(
        self,
        queries: Mapping[str, str] | Sequence[str],
        k: int = 10,
        *,
        method: str | None = None,
        fusion: str = "rrf",
        dense_weight: float = 0.5,
        sparse_query_tokens: int | None = None,
    ) -> Results:
        """Every query's ranking, by query id (a list is keyed by its positions); the
        options are :meth:`search`'s. ``.to_beir()`` gives ``{query_id: {doc_id: score}}``."""
        if not isinstance(queries, Mapping):
            queries = {str(i): text for i, text in enumerate(queries)}
        ids = list(queries)
        return self.rank(
            [queries[q] for q in ids],
            k,
            method=method,
            fusion=fusion,
            dense_weight=dense_weight,
            sparse_query_tokens=sparse_query_tokens,
            query_ids=ids,
        )

    def needs_encoder(self, method: str | None = None) -> bool:
        """Whether ``method`` encodes the query with the LLM (all but BM25 do)."""
        return self._check_method(method) != "bm25"

    def rank(
        self,
        queries: Sequence[str],
        k: int,
        *,
        method: str | None = None,
        fusion: str = "rrf",
        dense_weight: float = 0.5,
        embeddings: np.ndarray | None = None,
        sparse_query_tokens: int | None = None,
        query_ids: Sequence[str] | None = None,
    ) -> Results:
        """Each query's ranking, best first: the core every search runs.

        ``embeddings`` are the queries' raw pooled embeddings when the caller has them
        (a benchmark times encoding apart); otherwise the queries are encoded here.
        ``query_ids`` name the queries (default: their positions). An index whose every
        document was deleted answers every query with no hits.
        """
        self._check_open()
        if k < 1:
            raise RetrieverError(f"k must be at least 1, got {k}")
        method = self._check_method(method)
        check_queries(queries)
        _check_query_ids(query_ids, len(queries))
        if query_ids is None:
            query_ids = [str(i) for i in range(len(queries))]
        if len(self) == 0:
            # Nothing to compare the queries with: no need to encode them.
            ranked: list[list[tuple[int, float]]] = [[] for _ in queries]
            return results_from_lists(query_ids, ranked, self.docstore.ids_of, self.docstore)
        if embeddings is None and method != "bm25":
            embeddings = self.encoder.encode_queries(list(queries))
        # One query: numpy's products run on one thread, so no spinning BLAS worker takes
        # a core from the FAISS search or the next query's forward (retriever.core.threads). A
        # batch keeps numpy's threads: its products are big, and it pays the spin once.
        numpy_threads = (
            self._numpy_blas.limit(limits=1) if len(queries) == 1 else contextlib.nullcontext()
        )
        with numpy_threads:
            parts = method.split("+")
            depth = k if len(parts) == 1 else max(k, FUSION_DEPTH)
            # Filtered once, for the dense half and a filtered-space sparse half alike.
            vectors = None
            if "dense" in parts or ("sparse" in parts and self.sparse.spec.space == "filtered"):
                vectors = self.filter.transform(embeddings)
            results = [
                self.retrieve(
                    part,
                    queries,
                    embeddings,
                    depth,
                    sparse_query_tokens=sparse_query_tokens,
                    vectors=vectors,
                )
                for part in parts
            ]
            ranked = ranked_lists(results, k, fusion, dense_weight)
        return results_from_lists(query_ids, ranked, self.docstore.ids_of, self.docstore)

    def retrieve(
        self,
        part: str,
        queries: Sequence[str],
        embeddings: np.ndarray | None,
        k: int,
        *,
        sparse_query_tokens: int | None = None,
        vectors: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """One retriever's ``(scores, keys)``, each ``(n, k)``; -1 keys pad short lists.

        ``vectors`` are the filtered ``embeddings`` when the caller has them already.
        """
        self._check_open()
        if k < 1:
            raise RetrieverError(f"k must be at least 1, got {k}")
        k = min(k, len(self))
        if k == 0:  # an emptied index: no part is asked for nothing
            return _no_hits(len(queries))
        if part == "dense":
            return self.search_vectors(
                self.filter.transform(embeddings) if vectors is None else vectors, k
            )
        if part == "sparse":
            space = self.sparse.spec.space
            if space != "filtered" or vectors is None:
                vectors = self.lens.vectors(embeddings, space)
            query_matrix = self.sparse.query_matrix(
                self.lens,
                vectors,
                self.encoder.text_token_ids(queries, queries=True),
                sparse_query_tokens,
            )
            return self.sparse.search(query_matrix, k)
        return self.bm25.search(queries, k)

    def search_vectors(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """FAISS search alone: ``(scores, keys)`` for already embedded queries."""
        self._check_open()
        if k < 1:
            raise RetrieverError(f"k must be at least 1, got {k}")
        if self.index is None:
            self._check_method("dense")
        if len(self) == 0:
            return _no_hits(len(vectors))
        with self._dense_guard:
            return self.index.search(vectors, min(k, len(self)))

    def explain(self, item: str | Hit, top: int = 20, *, words_only: bool = True) -> dict[str, Any]:
        """The top aligned tokens of a query text (or of a hit's document), raw and filtered.

        Returns ``{"text", "raw": [{"token", "score", "id"}...], "filtered": [...]}``;
        ``filtered`` reads the vector the index stores, mapped back by ``F^T``.
        ``words_only`` (the default) shows whole words, without stopwords or punctuation
        (see :meth:`TokenLens.top_tokens`); ``False`` gives the plain ranking.
        """
        return self.explain_many([item], top, words_only=words_only)[0]

    def explain_many(
        self, items: Sequence[str | Hit], top: int = 20, *, words_only: bool = True
    ) -> list[dict[str, Any]]:
        """:meth:`explain` for each item, the queries encoded in one batch and the
        documents in another."""
        self._check_open()
        queries = [i for i, item in enumerate(items) if not isinstance(item, Hit)]
        documents = [i for i, item in enumerate(items) if isinstance(item, Hit)]
        texts = [item.embedding_text if isinstance(item, Hit) else item for item in items]
        embeddings: list[Any] = [None] * len(items)
        if queries:
            encoded = self.encode_queries([texts[i] for i in queries])
            for row, i in enumerate(queries):
                embeddings[i] = encoded[row : row + 1]
        if documents:
            encoded = self.encoder.encode_documents(
                [texts[i] for i in documents], show_progress=False
            )
            for row, i in enumerate(documents):
                embeddings[i] = encoded[row : row + 1]
        return [
            {"text": text, **self._top_words(embedding, top, words_only)}
            for text, embedding in zip(texts, embeddings, strict=True)
        ]

    def _top_words(self, embedding: np.ndarray, top: int, words_only: bool) -> dict[str, Any]:
        return {
            space: [
                token.to_dict()
                for token in self.lens.top_tokens(embedding, space, top, words_only=words_only)[0]
            ]
            for space in ("raw", "filtered")
        }

    def shared_tokens(
        self, query: str, hits: Sequence[Hit], top: int = 50, *, space: str = DISPLAY_SPACE
    ) -> list[list[AlignedToken]]:
        """For each hit, the words among both its and the query's ``top`` aligned words in
        ``space`` (whole words, no stopwords or punctuation; the default space is the one
        whose displayed words match the text best, see ``lens.DISPLAY_SPACE``).

        Ordered by the product of the two scores; each token carries the hit's score.
        """
        self._check_open()
        query_tokens = self.lens.top_tokens(
            self.encode_queries([query]), space, top, words_only=True
        )[0]
        query_scores = {token.id: token.score for token in query_tokens}
        if not hits:
            return []
        documents = self.encoder.encode_documents(
            [hit.embedding_text for hit in hits], show_progress=False
        )
        shared = []
        for tokens in self.lens.top_tokens(documents, space, top, words_only=True):
            common = [t for t in tokens if t.id in query_scores]
            shared.append(sorted(common, key=lambda t: -t.score * query_scores[t.id]))
        return shared

    def close(self) -> None:
        """Let go of the docstore, the dense backend and this searcher's hold on its
        generation. Closing twice does nothing; any search after it is refused."""
        if self._closed:
            return
        self._closed = True
        self.docstore.close()
        if self.index is not None:
            self.index.close()
        hold = getattr(self, "_hold", None)
        if hold is not None:
            hold.release()

    def set_search_params(
        self, *, nprobe: int | None = None, ef_search: int | None = None, rescore: int | None = None
    ) -> None:
        """Change ``nprobe`` (IVF), ``efSearch`` (HNSW) or ``rescore`` (M) for the searches
        that follow. Each must be at least 1; None leaves it as it is."""
        self._check_open()
        given = SearchParams(nprobe, ef_search, rescore)
        if self.index is None:
            self._check_method("dense")
        with self._dense_guard:
            self.index.set_search_params(given.faiss())


def check_method(method: str | None, parts: Sequence[str], folder: Path) -> str:
    """``method`` (None: the default) if an index holding ``parts`` answers it; refused in
    one line naming what to rebuild with otherwise. Needs only the manifest's parts, so a
    command checks it before the model loads."""
    answered = [m for m in METHODS if set(m.split("+")) <= set(parts)]
    method = method or answered[0]
    if method not in METHODS:
        raise RetrieverError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    missing = [part for part in method.split("+") if part not in parts]
    if missing:
        flags = {"dense": "(without --no-dense)", "sparse": "--sparse", "bm25": "--bm25"}
        raise RetrieverError(
            f"{folder} cannot answer {method!r}: it holds no {' or '.join(missing)} "
            f"index (rebuild with `retriever index ... "
            f"{' '.join(flags[p] for p in missing)}`); it answers {', '.join(answered)}"
        )
    return method


def _no_hits(queries: int) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, keys)`` of ``queries`` empty lists, shaped as a retriever's."""
    return np.empty((queries, 0), dtype=np.float32), np.empty((queries, 0), dtype=np.int64)


def _check_query_ids(query_ids: Sequence[str] | None, count: int) -> None:
    if query_ids is None:
        return
    if len(query_ids) != count:
        raise RetrieverError(f"{len(query_ids)} query ids for {count} queries")
    if len(set(query_ids)) != count:
        repeated = next(q for q in query_ids if list(query_ids).count(q) > 1)
        raise RetrieverError(f"query id {shown_id(repeated)} is given twice; ids must be unique")


def _check_encoder(folder: Path, manifest: Manifest, encoder: Encoder) -> None:
    """A caller's encoder must be the one the index was built with."""
    built_with = manifest.weights_sha256
    if encoder.resolved.weights_sha256 != built_with:
        raise RetrieverError(
            f"{folder} was built with other weights (sha256 {built_with[:12]}...) than the "
            f"encoder given ({encoder.resolved.weights_sha256[:12]}...)"
        )
    settings = manifest.spec.encoder
    if encoder.config != settings:
        raise RetrieverError(
            f"{folder} was built with encoder settings {settings.to_dict()}, the encoder given "
            f"has {encoder.config.to_dict()}"
        )


def _check_counts(
    folder: Path,
    manifest: Manifest,
    index: DenseBackend | None,
    sparse: KeyTokenIndex | None,
    bm25: BM25Index | None,
    docstore: DocStore,
) -> None:
    expected = manifest.count
    counts = {"docstore": len(docstore)}
    if index is not None:
        counts[f"{index.kind} index"] = index.count
    if sparse is not None:
        counts["sparse index"] = sparse.num_documents
    if bm25 is not None:
        counts["BM25 index"] = bm25.num_documents
    if any(count != expected for count in counts.values()):
        found = ", ".join(f"the {name} {count}" for name, count in counts.items())
        raise RetrieverError(
            f"{folder} is inconsistent: the manifest counts {expected} documents, {found}; "
            "rebuild it"
        )
