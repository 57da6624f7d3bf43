"""Storage (float32, float16, int8, binary) x index (Flat, HNSW, IVF): every build, search,
add and delete answers as brute force over the vectors the codes decode to; RaBitQ codes
estimate inner products, better with more bits, and rescore to the exact top k."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from retriever import EncoderConfig, FilterSpec, RetrieverError, Searcher, build_index
from retriever.cli import main
from retriever.core.spec import DenseSpec, IndexSpec, ModelSpec, SearchParams
from retriever.index.build import BuildOptions, Indexer, delete_documents
from retriever.parts.dense.faiss_install import faiss
from retriever.store.embeddings import EmbeddingStore
from tests.conftest import synthetic_docs, write_jsonl

FIRST = synthetic_docs(60, seed=11, prefix="a")
SECOND = synthetic_docs(12, seed=12, prefix="b")
QUERIES = [doc["text"] for doc in synthetic_docs(6, seed=13)]
DELETED = ["a3", "a17", "b2"]
K = 8
INDEX_TYPES = {"Flat": {}, "HNSW16": {"ef_search": 200}, "IVF4": {"nprobe": 4}}
STORAGES = ("float32", "float16", "int8", "binary")


def _build(
    model: Path,
    folder: Path,
    storage: str,
    index_type: str,
    *,
    rescore: int | None = None,
    **options: object,
) -> tuple[Path, np.ndarray]:
    """The index, and the filtered vectors its build stored (read back from its store)."""
    store = folder.with_name(folder.name + "-store")
    search = INDEX_TYPES[index_type]
    spec = IndexSpec(
        model=ModelSpec(name=str(model), dtype="float32"),
        encoder=EncoderConfig(max_length=64),
        filter=FilterSpec(tau=1),
        dense=DenseSpec(
            index_type=index_type,
            storage=storage,
            search=SearchParams(search.get("nprobe"), search.get("ef_search"), rescore),
            **options,
        ),
    )
    out = build_index(
        write_jsonl(folder.with_suffix(".jsonl"), FIRST),
        folder,
        spec,
        BuildOptions(store=store, chunk_size=16),
    )
    searcher = Searcher.load(out)
    raw = np.concatenate([s.embeddings("mean") for s in EmbeddingStore.open(store).shards()])
    vectors = searcher.filter.transform(raw)
    searcher.close()
    return out, vectors


def _decoded(index: Path, keys: list[int], vectors: np.ndarray, storage: str, sample):
    """The vectors the index's codes decode to: FAISS reconstructs float16 and int8 codes
    (IVF's residuals included); binary codes are the signs around the sample's mean."""
    if storage == "binary":
        centre = sample.mean(axis=0)
        return np.where(vectors > centre, 1.0, -1.0) / np.sqrt(vectors.shape[1])
    stored = faiss.read_index(str(index / "index.faiss"))
    try:
        faiss.extract_index_ivf(stored).set_direct_map_type(faiss.DirectMap.Hashtable)
    except RuntimeError:
        pass  # an id map reconstructs by key as it is
    decoded = np.stack([stored.reconstruct(key) for key in keys])
    if storage == "float32":
        assert np.allclose(decoded, vectors, atol=1e-6)
    elif storage == "float16":
        assert np.abs(decoded - vectors).max() < 1e-3
    else:  # 255 steps per range; documents added later are clipped to the sample's ranges
        assert np.median(np.abs(decoded - vectors)) < 0.01
    return decoded


def _expected_scores(queries: np.ndarray, decoded: np.ndarray, storage: str, centre) -> np.ndarray:
    if storage == "binary":
        signs = np.where(queries > centre, 1.0, -1.0) / np.sqrt(queries.shape[1])
        return signs @ decoded.T
    return queries @ decoded.T


def _assert_matches(
    index: Path, ids: list[str], keys: list[int], vectors: np.ndarray, storage: str, sample
) -> None:
    """Each query's ranking: the brute-force top-k scores, each hit at its own score (ties
    in Hamming distance may order equal documents either way)."""
    decoded = _decoded(index, keys, vectors, storage, sample)
    centre = sample.mean(axis=0)
    searcher = Searcher.load(index)
    raw = searcher.encode_queries(QUERIES)
    expected = _expected_scores(searcher.filter.transform(raw), decoded, storage, centre)
    results = searcher.rank(QUERIES, K, embeddings=raw)
    searcher.close()
    by_id = {doc_id: row for row, doc_id in enumerate(ids)}
    for query, ranking in enumerate(results.rankings):
        best = np.sort(expected[query])[::-1][:K]
        assert np.allclose(ranking.scores, best, atol=2e-3), (storage, query)
        for doc_id, score in zip(ranking.ids, ranking.scores, strict=True):
            assert expected[query][by_id[doc_id]] == pytest.approx(score, abs=2e-3)


def _grow_and_shrink(
    model: Path, index: Path, vectors: np.ndarray, tmp_path: Path
) -> tuple[list[str], list[int], np.ndarray]:
    """Add SECOND and delete DELETED: every id (FIRST then SECOND), the rows kept, and the
    filtered vectors of those rows."""
    from retriever.encode.encoder import Encoder

    encoder = Encoder.load(str(model), EncoderConfig(max_length=64), dtype="float32")
    store = tmp_path / "more-store"
    Indexer(encoder).add(
        index, write_jsonl(tmp_path / "more.jsonl", SECOND), options=BuildOptions(store=store)
    )
    delete_documents(index, DELETED)
    raw = np.concatenate([s.embeddings("mean") for s in EmbeddingStore.open(store).shards()])
    searcher = Searcher.load(index)
    every = np.concatenate([vectors, searcher.filter.transform(raw)])
    searcher.close()
    all_ids = [doc["_id"] for doc in FIRST + SECOND]
    kept = [i for i, doc_id in enumerate(all_ids) if doc_id not in DELETED]
    return all_ids, kept, every[kept]


@pytest.mark.parametrize("index_type", list(INDEX_TYPES))
@pytest.mark.parametrize("storage", STORAGES)
def test_storage_and_index_answer_as_brute_force_through_add_and_delete(
    tiny_model: Path, tmp_path: Path, storage: str, index_type: str
) -> None:
    index, vectors = _build(tiny_model, tmp_path / "index", storage, index_type)
    ids = [doc["_id"] for doc in FIRST]
    _assert_matches(index, ids, list(range(len(ids))), vectors, storage, vectors)
    manifest = json.loads((index / "manifest.json").read_text())
    assert manifest["dense"]["backend"]["storage"] == storage

    all_ids, kept, every = _grow_and_shrink(tiny_model, index, vectors, tmp_path)
    _assert_matches(index, [all_ids[i] for i in kept], kept, every, storage, vectors)


@pytest.mark.parametrize("index_type", ["Flat", "HNSW16", "IVF4"])
def test_binary_rescore_returns_the_exact_float_top_k_when_it_sees_every_document(
    tiny_model: Path, tmp_path: Path, index_type: str
) -> None:
    # M x k = 8 x 8 = 64 >= 60 documents: the second stage re-scores every document.
    index, vectors = _build(
        tiny_model, tmp_path / "index", "binary", index_type, rescore=8, rescore_vectors="float32"
    )
    searcher = Searcher.load(index)
    raw = searcher.encode_queries(QUERIES)
    exact = searcher.filter.transform(raw) @ vectors.T
    results = searcher.rank(QUERIES, K, embeddings=raw)
    for query, ranking in enumerate(results.rankings):
        order = np.argsort(-exact[query])[:K]
        assert list(ranking.ids) == [FIRST[i]["_id"] for i in order]
        assert np.allclose(ranking.scores, exact[query][order], atol=1e-5)
    # With one candidate per hit, the binary codes alone decide which documents come back.
    searcher.set_search_params(rescore=1)
    narrow = searcher.rank(QUERIES, K, embeddings=raw)
    searcher.close()
    assert any(a.ids != b.ids for a, b in zip(narrow.rankings, results.rankings, strict=True))


def test_int8_rescore_scores_by_the_int8_vectors_through_add_and_delete(
    tiny_model: Path, tmp_path: Path
) -> None:
    index, vectors = _build(tiny_model, tmp_path / "index", "binary", "Flat", rescore=8)
    from retriever.encode.encoder import Encoder

    encoder = Encoder.load(str(tiny_model), EncoderConfig(max_length=64), dtype="float32")
    Indexer(encoder).add(index, write_jsonl(tmp_path / "more.jsonl", SECOND))
    delete_documents(index, DELETED)
    low, step = np.load(index / "rescore_range.npy")
    codes = np.load(index / "rescore_codes.npy")
    keys = np.load(index / "rescore_keys.npy")
    all_ids = [doc["_id"] for doc in FIRST + SECOND]
    assert [all_ids[key] for key in keys] == [i for i in all_ids if i not in DELETED]
    decoded = codes * step + low
    # int8 over the first documents' ranges: each vector within half a step (or clipped).
    assert np.abs(decoded[:58] - np.delete(vectors, [3, 17], axis=0)).max() <= step.max()
    searcher = Searcher.load(index)
    searcher.set_search_params(rescore=len(keys))  # every document reaches the second stage
    raw = searcher.encode_queries(QUERIES)
    expected = searcher.filter.transform(raw) @ decoded.T
    results = searcher.rank(QUERIES, K, embeddings=raw)
    searcher.close()
    for query, ranking in enumerate(results.rankings):
        order = np.argsort(-expected[query])[:K]
        assert list(ranking.ids) == [all_ids[keys[i]] for i in order]


def test_the_zero_centre_thresholds_at_the_sign(tiny_model: Path, tmp_path: Path) -> None:
    index, vectors = _build(tiny_model, tmp_path / "index", "binary", "Flat", binary_centre="zero")
    assert not np.load(index / "binary_centre.npy").any()
    manifest = json.loads((index / "manifest.json").read_text())
    assert manifest["dense"]["backend"]["binary_centre"] == "zero"
    searcher = Searcher.load(index)
    raw = searcher.encode_queries(QUERIES)
    signs = lambda v: np.where(v > 0, 1.0, -1.0) / np.sqrt(v.shape[1])  # noqa: E731
    expected = signs(searcher.filter.transform(raw)) @ signs(vectors).T
    results = searcher.rank(QUERIES, K, embeddings=raw)
    searcher.close()
    for query, ranking in enumerate(results.rankings):
        assert np.allclose(ranking.scores, np.sort(expected[query])[::-1][:K], atol=1e-5)


def _damage(index: Path, change) -> None:
    path = index / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest["dense"]["backend"])
    path.chmod(0o644)
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("storage", "claimed", "said"),
    [
        ("float32", "int8", "its manifest says int8 storage, its index file holds float32"),
        ("int8", "float16", "its manifest says float16 storage, its index file holds int8"),
        ("float32", "binary", "as a binary FAISS index"),
        ("binary", "float32", "as a float FAISS index"),
    ],
)
def test_a_manifest_whose_storage_does_not_match_the_index_is_refused_in_one_line(
    tiny_model: Path, tmp_path: Path, capsys, storage: str, claimed: str, said: str
) -> None:
    index, _ = _build(tiny_model, tmp_path / "index", storage, "Flat")
    if claimed == "binary":
        np.save(index / "binary_centre.npy", np.zeros(32, np.float32))
    _damage(index, lambda backend: backend.update(storage=claimed))
    with pytest.raises(RetrieverError, match=said):
        Searcher.load(index)
    capsys.readouterr()  # the build's progress bars
    assert main(["search", str(index), "word", "--model", str(tiny_model)]) != 0
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and said in error[0]


def test_rescore_vectors_that_miss_documents_are_refused(tiny_model: Path, tmp_path: Path) -> None:
    index, _ = _build(tiny_model, tmp_path / "index", "int8", "Flat", rescore=4)
    keys = np.load(index / "rescore_keys.npy")
    (index / "rescore_keys.npy").chmod(0o644)
    np.save(index / "rescore_keys.npy", keys[:-1])
    with pytest.raises(RetrieverError, match="do not fit"):
        Searcher.load(index)


@pytest.mark.parametrize(
    ("options", "said"),
    [
        ({"storage": "float16", "search": SearchParams(rescore=4)}, "not compact"),
        ({"storage": "int8", "index_type": "IVF4,PQ4"}, "names its own codes"),
        ({"storage": "int4"}, "unknown --storage"),
        ({"ef_construction": 80}, "--ef-construction does not apply to --index-type Flat"),
        ({"binary_centre": "median", "storage": "binary"}, "unknown --binary-centre"),
        ({"bits": 2}, "--bits applies to --storage rabitq"),
        ({"storage": "rabitq", "bits": 9}, "--bits must be at most 8"),
        ({"storage": "rabitq", "bits": 0}, "--bits must be at least 1"),
        ({"storage": "rabitq", "backend": "milvus"}, "--storage rabitq has no Milvus mapping"),
    ],
)
def test_storage_mistakes_are_refused_before_the_model_loads(
    tmp_path: Path, options: dict, said: str
) -> None:
    # A model path that does not exist: the refusal must come before anything loads it.
    with pytest.raises(RetrieverError, match=said):
        spec = IndexSpec(
            model=ModelSpec(name=str(tmp_path / "no-such-model")), dense=DenseSpec(**options)
        )
        build_index(write_jsonl(tmp_path / "docs.jsonl", FIRST[:4]), tmp_path / "index", spec)


def test_rescore_at_search_needs_an_index_built_with_it(tiny_model: Path, tmp_path: Path) -> None:
    index, _ = _build(tiny_model, tmp_path / "index", "binary", "Flat")
    with pytest.raises(RetrieverError, match="built with --rescore"):
        Searcher.load(index, search=SearchParams(rescore=4))


def test_an_index_type_with_its_own_codes_grows_and_shrinks(tiny_model: Path, tmp_path: Path):
    index = build_index(
        write_jsonl(tmp_path / "docs.jsonl", FIRST),
        tmp_path / "index",
        IndexSpec(
            model=ModelSpec(name=str(tiny_model), dtype="float32"),
            encoder=EncoderConfig(max_length=64),
            dense=DenseSpec(index_type="HNSW16,SQ8"),
        ),
    )
    manifest = json.loads((index / "manifest.json").read_text())
    assert manifest["dense"]["backend"]["storage"] == "int8"  # what the file holds
    from retriever.encode.encoder import Encoder

    encoder = Encoder.load(str(tiny_model), EncoderConfig(max_length=64), dtype="float32")
    Indexer(encoder).add(index, write_jsonl(tmp_path / "more.jsonl", SECOND))
    delete_documents(index, DELETED)
    searcher = Searcher.load(index)
    assert len(searcher) == len(FIRST) + len(SECOND) - len(DELETED)
    assert not set(searcher.search(QUERIES[0], k=len(searcher)).ids) & set(DELETED)
    searcher.close()


def test_eval_counts_the_rescore_vectors_in_the_dense_bytes(tiny_model: Path, tmp_path: Path):
    from retriever.evaluation.metrics import index_sizes

    index, _ = _build(tiny_model, tmp_path / "index", "binary", "Flat", rescore=4)
    manifest = json.loads((index / "manifest.json").read_text())
    sizes = index_sizes(index, manifest["dense"]["backend"])
    files = [
        "index.faiss",
        "binary_centre.npy",
        *(f"rescore_{n}.npy" for n in ("codes", "keys", "range")),
    ]
    assert sizes["dense"] == sum((index / name).stat().st_size for name in files)
    assert manifest["build"]["bytes"]["dense"] == sizes["dense"]


def _ranked(index: Path, vectors: np.ndarray) -> tuple[list, np.ndarray]:
    """The index's rankings of QUERIES and the exact scores of every query and document."""
    searcher = Searcher.load(index)
    raw = searcher.encode_queries(QUERIES)
    exact = searcher.filter.transform(raw) @ vectors.T
    rankings = searcher.rank(QUERIES, K, embeddings=raw).rankings
    searcher.close()
    return rankings, exact


def _rabitq_quality(rankings: list, exact: np.ndarray, ids: list[str]) -> tuple[float, float]:
    """(recall@K of the exact top K, the largest error of a returned score)."""
    row_of = {doc_id: row for row, doc_id in enumerate(ids)}
    recall, error = [], 0.0
    for query, ranking in enumerate(rankings):
        best = {ids[i] for i in np.argsort(-exact[query])[:K]}
        recall.append(len(best & set(ranking.ids)) / K)
        for doc_id, score in zip(ranking.ids, ranking.scores, strict=True):
            error = max(error, abs(score - exact[query][row_of[doc_id]]))
    return float(np.mean(recall)), error


@pytest.mark.parametrize("index_type", list(INDEX_TYPES))
def test_rabitq_codes_estimate_inner_products_and_more_bits_estimate_better(
    tiny_model: Path, tmp_path: Path, index_type: str
) -> None:
    ids = [doc["_id"] for doc in FIRST]
    found = {}
    for bits in (1, 4):
        index, vectors = _build(
            tiny_model, tmp_path / f"index-{bits}", "rabitq", index_type, bits=bits
        )
        backend = json.loads((index / "manifest.json").read_text())["dense"]["backend"]
        assert (backend["storage"], backend["bits"]) == ("rabitq", bits)
        assert backend.get("metric") == ("l2" if index_type.startswith("HNSW") else None)
        held = faiss.downcast_index(faiss.read_index(str(index / backend["file"])))
        if index_type.startswith("IVF"):  # FastScan: as good, and faster (rabitq-fastscan)
            assert isinstance(held, faiss.IndexIVFRaBitQFastScan)
        found[bits] = _rabitq_quality(*_ranked(index, vectors), ids)
    # Scores are inner-product estimates (HNSW's L2 distances mapped back), not distances.
    assert found[4][1] < 0.1 and found[1][1] < 0.5
    assert found[4][0] >= 0.75 and found[4][0] >= found[1][0]
    assert found[4][1] < found[1][1]


@pytest.mark.parametrize("index_type", list(INDEX_TYPES))
def test_rabitq_grows_shrinks_and_rescores_to_the_exact_top_k(
    tiny_model: Path, tmp_path: Path, index_type: str
) -> None:
    # M x k = 8 x 8 = 64 >= every document: the second stage re-scores them all.
    index, vectors = _build(
        tiny_model,
        tmp_path / "index",
        "rabitq",
        index_type,
        bits=2,
        rescore=8,
        rescore_vectors="float32",
    )
    all_ids, kept, every = _grow_and_shrink(tiny_model, index, vectors, tmp_path)
    rankings, exact = _ranked(index, every)
    for query, ranking in enumerate(rankings):
        order = np.argsort(-exact[query])[:K]
        assert list(ranking.ids) == [all_ids[kept[i]] for i in order]
        assert np.allclose(ranking.scores, exact[query][order], atol=1e-5)


def test_rabitq_bits_the_manifest_misstates_are_refused(tiny_model: Path, tmp_path: Path) -> None:
    index, _ = _build(tiny_model, tmp_path / "index", "rabitq", "Flat", bits=2)
    _damage(index, lambda backend: backend.update(bits=4))
    with pytest.raises(RetrieverError, match="says 4-bit RaBitQ codes, its index file holds 2-bit"):
        Searcher.load(index)


def test_rabitq_from_the_command_line(tiny_model: Path, tmp_path: Path, capsys) -> None:
    corpus = write_jsonl(tmp_path / "docs.jsonl", FIRST)
    out = tmp_path / "index"
    argv = ["-q", "index", str(corpus), "--out", str(out), "--model", str(tiny_model)]
    assert main([*argv, "--dtype", "float32", "--storage", "rabitq", "--bits", "3"]) == 0
    capsys.readouterr()  # what the build printed
    assert main(["-q", "info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["spec"]["dense"]["storage"] == "rabitq" and info["spec"]["dense"]["bits"] == 3
    bad = tmp_path / "bad"
    assert main(["-q", "index", str(corpus), "--out", str(bad), "--bits", "2"]) == 2
    assert "--bits applies to --storage rabitq" in capsys.readouterr().err
    assert not bad.exists()
