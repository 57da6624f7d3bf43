"""The frontier benchmark: its rows are what Searcher returns for the same folders, its
grid and Pareto front are what they say, and its synthetic collections are distinct."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from retriever.core.spec import EncoderConfig
from retriever.data.datasets import scan_corpus
from retriever.encode.embedfilter import UnembeddingSpectrum
from retriever.encode.encoder import Encoder
from retriever.evaluation.bench import frontier
from retriever.evaluation.bench.frontier import (
    Cell,
    FrontierInputs,
    FrontierSettings,
    MeasuredRows,
    build_cell,
    exact_top,
    frontier_rows,
    grid,
    measure_cell,
    pareto_front,
    projection,
)
from retriever.evaluation.bench.frontier_scale import (
    ScaleRow,
    calibrate_spread,
    scale_rows,
    synthetic_embeddings,
)
from retriever.evaluation.metrics import encode_timed, evaluate_run
from retriever.parts.dense.backends import backend_bytes
from retriever.search.searcher import Searcher
from retriever.store.encoding import encode_corpus
from tests.conftest import synthetic_docs, write_jsonl

DOCS = synthetic_docs(300, seed=21)  # PQ trains 256 centroids per sub-quantizer
QUERIES = {f"q{i}": doc["text"] for i, doc in enumerate(synthetic_docs(12, seed=22))}
QRELS = {q: {DOCS[i]["_id"]: 1, DOCS[i + 1]["_id"]: 1} for i, q in enumerate(QUERIES)}


@pytest.fixture(scope="module")
def inputs(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> FrontierInputs:
    root = tmp_path_factory.mktemp("frontier")
    encoder = Encoder.load(str(tiny_model), EncoderConfig(max_length=64), dtype="float32")
    store = encode_corpus(encoder, scan_corpus(write_jsonl(root / "docs.jsonl", DOCS)))
    shards = store.shards()
    return FrontierInputs(
        encoder,
        store,
        encode_timed(encoder.encode_queries, QUERIES, latency_queries=3),
        QRELS,
        root,
        np.concatenate([np.asarray(s.embeddings("mean")) for s in shards]),
        [d.id for s in shards for d in s.documents()],
    )


@pytest.mark.parametrize(
    "cell",
    [
        Cell("embedfilter-nomean", 2, "int8", "HNSW32"),
        Cell("embedfilter", 2, "binary+rescore", "Flat", "zero", 4),
        Cell("unfiltered", 1, "pq", "IVF64"),
    ],
    ids=lambda cell: cell.name,
)
def test_a_row_is_what_searcher_returns_for_the_same_folder(
    inputs: FrontierInputs, cell: Cell
) -> None:
    settings = FrontierSettings(latency_queries=3, warmup=1)
    spectrum = UnembeddingSpectrum(inputs.encoder.unembedding())
    embed_filter = projection(spectrum, cell.filter, cell.tau)
    folder = build_cell(cell, embed_filter, inputs, settings)
    exact = exact_top(
        embed_filter.transform(inputs.queries.embeddings),
        embed_filter.transform(inputs.documents),
        settings.k,
    )
    searcher = Searcher.load(folder, encoder=inputs.encoder)
    row = measure_cell(searcher, exact, inputs, settings)
    searcher.close()

    # A user's own searcher on the folder, searching the query texts.
    user = Searcher.load(folder, encoder=inputs.encoder)
    results = user.batch_search(QUERIES, k=settings.k)
    user.close()
    assert row["ndcg_at_10"] == pytest.approx(evaluate_run(QRELS, results)["ndcg_at_10"])
    position = {doc_id: i for i, doc_id in enumerate(inputs.doc_ids)}
    overlap = [
        len({position[d] for d in ranking.ids} & set(exact[i].tolist())) / settings.k
        for i, ranking in enumerate(results.rankings)
    ]
    assert row["recall_at_10_vs_exact"] == pytest.approx(np.mean(overlap))
    manifest = user.manifest
    assert row["bytes_per_doc"] == backend_bytes(folder, manifest.backend) / len(DOCS)
    if cell.storage.endswith("+rescore"):
        assert (folder / "rescore_codes.npy").stat().st_size >= len(DOCS) * embed_filter.dim
    for part in ("search", "fetch"):
        assert 0 < row[f"{part}_ms_p50"] <= row[f"{part}_ms_p95"]


def test_the_grid_spans_what_it_says() -> None:
    cells = grid(FrontierSettings())
    assert {c.filter for c in cells if c.tau == 1} == {"unfiltered", "embedfilter-nomean"}
    assert {c.tau for c in cells if c.filter == "embedfilter"} == {2, 4, 8, 16}
    flat_binary = [c for c in cells if c.storage == "binary" and c.index_type == "Flat"]
    assert {c.centre for c in flat_binary} == {"documents", "zero"}
    assert {c.rescore for c in cells if c.storage == "binary+rescore"} == {4, 16}
    assert not [c for c in cells if c.storage == "pq" and c.index_type.startswith("HNSW")]
    assert len({c.name for c in cells}) == len(cells)


def test_the_pareto_front_keeps_exactly_the_unbeaten_points() -> None:
    points = [(100, 0.5), (50, 0.5), (50, 0.4), (10, 0.2), (200, 0.6), (10, 0.1)]
    assert pareto_front(points) == [False, True, False, True, True, False]


def test_synthetic_vectors_are_distinct_and_calibrated(inputs: FrontierInputs) -> None:
    spectrum = UnembeddingSpectrum(inputs.encoder.unembedding())
    embed_filter = projection(spectrum, "embedfilter-nomean", 2)
    calibration = calibrate_spread(inputs.documents, embed_filter, seed=0)
    made = np.concatenate(
        list(synthetic_embeddings(inputs.documents, 500, calibration["spread"], seed=1, chunk=200))
    )
    assert made.shape == (500, inputs.documents.shape[1])
    assert len(np.unique(made.round(6), axis=0)) == 500  # no two alike, unlike tiled copies
    assert abs(calibration["similarity"] - calibration["target_similarity"]) < 0.1

    vectors = embed_filter.transform(made)
    queries = embed_filter.transform(inputs.queries.embeddings)
    exact = exact_top(queries, vectors, 10)
    flat = scale_rows(vectors, queries, exact, ScaleRow("Flat", "float32"), [{}])
    assert flat[0]["recall_at_10_vs_exact"] == 1.0
    spans = [{"nprobe": 1}, {"nprobe": 16}]
    ivf = scale_rows(
        vectors, queries, exact, ScaleRow("IVF16", "binary+rescore"), spans, rescores=(1, 50)
    )
    settings = [(row["params"]["nprobe"], row["params"]["rescore"]) for row in ivf]
    assert settings == [(1, 1), (1, 50), (16, 1), (16, 50)]  # one index, every setting
    assert len({row["build_seconds"] for row in ivf}) == 1
    recall = {s: row["recall_at_10_vs_exact"] for s, row in zip(settings, ivf, strict=True)}
    assert recall[(1, 50)] <= recall[(16, 50)]
    # All 16 lists and every document rescored: int8 ranks nearly as exact float32 does,
    # far above what one bit per dimension finds alone.
    assert recall[(16, 50)] >= 0.9 > recall[(16, 1)]
    assert ivf[0]["mapped_bytes"] >= 500 * embed_filter.dim  # the int8 rescore vectors
    for row in ivf:
        assert row["recall_at_10_low"] <= row["recall_at_10_vs_exact"] <= row["recall_at_10_high"]
    assert ivf[0]["recall_at_10_low"] < ivf[0]["recall_at_10_high"]  # queries disagree


def test_measured_rows_resume_only_under_the_same_header(tmp_path: Path) -> None:
    path = tmp_path / "rows.partial.jsonl"
    cell = Cell("embedfilter-nomean", 2, "int8", "Flat")
    first = MeasuredRows(path, {"settings": {"taus": (2,)}})
    first.add(cell.name, {"ndcg_at_10": 0.5})

    again = MeasuredRows(path, {"settings": {"taus": (2,)}})
    assert (again.rows, again.sittings) == ({cell.name: {"ndcg_at_10": 0.5}}, 2)
    with path.open("a") as file:  # a run killed in the middle of a line
        file.write('{"cell": "embedfilter-nomean-tau2-float16-documents-Flat", "ro')
    torn = MeasuredRows(path, {"settings": {"taus": (2,)}})
    assert (torn.rows.keys(), torn.sittings) == ({cell.name}, 3)
    torn.add("another", {"ndcg_at_10": 0.25})
    assert MeasuredRows(path, {"settings": {"taus": (2,)}}).rows.keys() == {cell.name, "another"}
    elsewhere = MeasuredRows(path, {"settings": {"taus": (2, 4)}})
    assert (elsewhere.rows, elsewhere.sittings) == ({}, 1)


def test_a_resumed_grid_builds_only_the_rows_it_lacks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = FrontierSettings(
        filters=("embedfilter-nomean",),
        taus=(2,),
        storages=("int8", "float16"),
        index_types=("Flat",),
    )
    kept = {"ndcg_at_10": 0.3, "bytes_per_doc": 296.0, "ram_bytes_per_doc": 296.0}
    measured = MeasuredRows(tmp_path / "rows.partial.jsonl", {})
    measured.add(Cell("embedfilter-nomean", 2, "int8", "Flat").name, kept)
    built = []

    def measure(cell, filtered, inputs, settings):
        built.append(cell.storage)
        return {"ndcg_at_10": 0.31, "bytes_per_doc": 584.0, "ram_bytes_per_doc": 584.0}

    monkeypatch.setattr(frontier, "_measured_cell", measure)
    monkeypatch.setattr(frontier, "exact_top", lambda queries, docs, k: None)
    spectrum = UnembeddingSpectrum(np.random.default_rng(0).standard_normal((40, 8)))
    inputs = SimpleNamespace(
        documents=np.ones((3, 8)), queries=SimpleNamespace(embeddings=np.ones((2, 8)))
    )
    rows = frontier_rows(spectrum, inputs, settings, measured)

    assert built == ["float16"]
    assert [r["ndcg_at_10"] for r in rows] == [0.3, 0.31]
    assert MeasuredRows(measured.path, {}).rows.keys() == {
        "embedfilter-nomean-tau2-int8-documents-Flat",
        "embedfilter-nomean-tau2-float16-documents-Flat",
    }
