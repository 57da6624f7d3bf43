"""A small end-to-end `retriever bench` on a slice of SciFact with the tiny model."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from retriever.cli import main
from retriever.data.datasets import load_qrels
from retriever.evaluation.machine import machine_line
from retriever.evaluation.metrics import evaluate_run, per_query_metrics, read_trec_run
from retriever.evaluation.scaling import ivfpq_type
from tests.conftest import SCIFACT, require_scifact


@pytest.fixture(scope="module", autouse=True)
def _needs_scifact() -> None:
    require_scifact()


REQUIRED = {
    "method",
    "band",
    "tau",
    "dim",
    "prompt",
    "pooling",
    "index_type",
    "ndcg_at_10",
    "recall_at_100",
    "encode_ms_p50",
    "search_ms_p50",
    "search_ms_p95",
    "index_bytes",
    "run_file",
    "ndcg_ratio",
    "latency_ratio",
    "storage_ratio",
}


@pytest.fixture(scope="module")
def bench_out(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "results"
    # A run file left by an earlier run into the same folder must not survive this one.
    (out / "runs").mkdir(parents=True)
    (out / "runs" / "earlier-variant.trec.gz").write_bytes(b"")
    code = main(
        [
            "bench",
            str(SCIFACT),
            "--model",
            str(tiny_model),
            "--limit",
            "80",
            "--pooling",
            "mean,last",
            "--taus",
            "1,2,4",
            "--bands",
            "edge,tail",
            "--index-types",
            "Flat",
            "HNSW16",
            "milvus:Flat",
            "--dtype",
            "float32",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    return out


def test_results_rows(bench_out: Path) -> None:
    rows = [
        r for r in json.loads((bench_out / "results.json").read_text()) if r["family"] == "dense"
    ]
    # Per pooling: unfiltered, nomean x 3 taus, 2 taus x (2 bands + 4 baselines); x 3 types.
    assert len(rows) == 2 * 3 * (1 + 3 + 2 * 6)
    assert all(REQUIRED <= set(row) for row in rows)
    methods = {row["method"] for row in rows}
    assert methods == {
        "unfiltered",
        "embedfilter",
        "embedfilter-nomean",
        "pca",
        "whiten",
        "abtt",
        "random",
    }
    for row in rows:
        assert row["dim"] == 32 // row["tau"]
        base = next(
            r
            for r in rows
            if r["method"] == "unfiltered"
            and (r["pooling"], r["index_type"]) == (row["pooling"], row["index_type"])
        )
        expected = row["ndcg_at_10"] / base["ndcg_at_10"] if base["ndcg_at_10"] else None
        assert row["ndcg_ratio"] == (pytest.approx(expected) if expected else None)
        assert row["storage_ratio"] == pytest.approx(row["index_bytes"] / base["index_bytes"])
        assert row["latency_ratio"] == pytest.approx(row["search_ms_p50"] / base["search_ms_p50"])
        if row["method"] == "unfiltered":
            assert row["beir_matches"], (row["beir_ndcg_at_10"], row["ndcg_at_10"])
        if row["index_type"] == "Flat":
            # A flat index stores d floats and one int64 key per vector.
            per_vector = (4 * row["dim"] + 8) / (4 * base["dim"] + 8)
            assert row["storage_ratio"] == pytest.approx(per_vector, rel=0.02)


def test_sparse_bm25_and_hybrid_rows(bench_out: Path) -> None:
    rows = json.loads((bench_out / "results.json").read_text())
    others = [r for r in rows if r["family"] != "dense" and r["pooling"] == "mean"]
    # Key tokens from the unfiltered, nomean (3 taus) and edge (2 taus) vectors; BM25; and
    # the best dense variant (nomean, tau 2) fused with each, both ways and cross-validated.
    assert [(r["method"], r["source"], r["tau"], r["fusion"]) for r in others] == [
        ("keytokens", "unfiltered", 1, None),
        ("keytokens", "embedfilter-nomean", 1, None),
        ("keytokens", "embedfilter-nomean", 2, None),
        ("keytokens", "embedfilter", 2, None),
        ("keytokens", "embedfilter-nomean", 4, None),
        ("keytokens", "embedfilter", 4, None),
        ("bm25", None, None, None),
        ("dense+keytokens", "embedfilter-nomean", 2, "rrf"),
        ("dense+keytokens", "embedfilter-nomean", 2, "weighted"),
        ("dense+keytokens", "embedfilter-nomean", 2, "cv-5fold"),
        ("dense+bm25", "embedfilter-nomean", 2, "rrf"),
        ("dense+bm25", "embedfilter-nomean", 2, "weighted"),
        ("dense+bm25", "embedfilter-nomean", 2, "cv-5fold"),
    ]
    judged = set(load_qrels(SCIFACT))
    for cv in (r for r in others if r["fusion"] == "cv-5fold"):
        held_out = [q for fold in cv["cv_folds"] for q in fold["held_out"]]
        assert len(held_out) == len(set(held_out)) and set(held_out) <= judged
        assert all(
            fold["train_queries"] + fold["held_out_queries"] == len(held_out)
            for fold in cv["cv_folds"]
        )
    keytokens = {(r["source"], r["tau"]): r for r in others if r["method"] == "keytokens"}
    bm25 = next(r for r in others if r["method"] == "bm25")
    for row in others:
        assert REQUIRED <= set(row), row["method"]
        assert row["search_ms_p50"] > 0 and row["batch_qps"] > 0 and row["index_bytes"] > 0
    # 80 documents of at most min(K, V) = 400 tokens each: a float and an int per posting.
    assert keytokens[("unfiltered", 1)]["index_bytes"] >= 80 * 400 * 8
    assert bm25["ndcg_at_10"] > 0  # the slice holds gold documents BM25 finds by their words
    hybrid = next(r for r in others if r["method"] == "dense+bm25" and r["fusion"] == "rrf")
    dense = next(
        r
        for r in rows
        if r["family"] == "dense"
        and r["method"] == "embedfilter-nomean"
        and r["band"] == "edge"
        and r["tau"] == 2
        and r["index_type"] == "Flat"
        and r["pooling"] == "mean"
    )
    assert hybrid["index_bytes"] == dense["index_bytes"] + bm25["index_bytes"]
    if dense["ndcg_at_10"]:
        assert hybrid["share_of_dense_ndcg"] == pytest.approx(
            hybrid["ndcg_at_10"] / dense["ndcg_at_10"]
        )
    qrels = load_qrels(SCIFACT)
    for row in others:
        run = read_trec_run(bench_out / row["run_file"])
        assert evaluate_run(qrels, run)["ndcg_at_10"] == pytest.approx(row["ndcg_at_10"], abs=1e-5)


def test_alignment_of_the_documents(bench_out: Path) -> None:
    entries = json.loads((bench_out / "alignment.json").read_text())
    mean = [e for e in entries if e["pooling"] == "mean"]
    assert [(e["space"], e["tau"]) for e in mean] == [
        ("raw", 1),
        ("embedfilter-nomean", 1),
        ("embedfilter", 2),
        ("embedfilter-nomean", 2),
        ("embedfilter", 4),
        ("embedfilter-nomean", 4),
    ]
    for entry in entries:
        assert entry["texts"] == 80 and len(entry["examples"]) == 3
        for key in (
            "hit_at_10",
            "content_hit_at_10",
            "local_alignment_rate",
            "global_alignment_rate",
            "junk_at_10",
        ):
            assert 0.0 <= entry[key] <= 1.0
    report = (bench_out / "results.md").read_text()
    assert report.count("| keytokens | embedfilter | edge | 2 |") == 2
    assert report.count("top 10 tokens of the first document") == 2


def test_run_files_reproduce_the_metrics(bench_out: Path) -> None:
    qrels = load_qrels(SCIFACT)
    rows = json.loads((bench_out / "results.json").read_text())
    written = {path.name for path in (bench_out / "runs").iterdir()}
    assert written == {Path(row["run_file"]).name for row in rows}
    for row in rows[:8]:
        run = read_trec_run(bench_out / row["run_file"])
        if row["index_type"] == "Flat":  # exact: k = 100 > 80 documents returns them all
            assert {len(hits) for hits in run.values()} == {80}
        recomputed = evaluate_run(qrels, run)
        assert recomputed["ndcg_at_10"] == pytest.approx(row["ndcg_at_10"], abs=1e-5)


def test_per_query_scores_checksums_and_ratio_intervals(bench_out: Path) -> None:
    """per_query.jsonl holds each row's nDCG@10 per query (what the repository keeps of a
    run), runs.sha256 names each run file's bytes, and each nDCG ratio has its interval."""
    qrels = load_qrels(SCIFACT)
    rows = json.loads((bench_out / "results.json").read_text())
    head, *lines = (bench_out / "per_query.jsonl").read_text().splitlines()
    query_ids = json.loads(head)["query_ids"]
    per_query = {entry["run"]: entry["ndcg_at_10"] for entry in map(json.loads, lines)}
    assert set(query_ids) == set(qrels) and set(per_query) == {r["run_file"] for r in rows}
    for row in rows[:4]:
        recomputed = per_query_metrics(qrels, read_trec_run(bench_out / row["run_file"]))
        expected = [round(recomputed[q]["ndcg_at_10"], 6) for q in query_ids]
        assert per_query[row["run_file"]] == expected
        assert sum(expected) / len(expected) == pytest.approx(row["ndcg_at_10"], abs=1e-6)
    checksums = dict(
        reversed(line.split("  ")) for line in (bench_out / "runs.sha256").read_text().splitlines()
    )
    assert set(checksums) == {r["run_file"] for r in rows}
    some = rows[0]["run_file"]
    assert checksums[some] == hashlib.sha256((bench_out / some).read_bytes()).hexdigest()
    for row in rows:
        if row["ndcg_ratio"] is None:  # the unfiltered row scored 0: no ratio, no interval
            assert row["ndcg_ratio_low"] is None and row["ndcg_ratio_high"] is None
        else:
            assert row["ndcg_ratio_low"] <= row["ndcg_ratio"] <= row["ndcg_ratio_high"]


def test_table_and_plot(bench_out: Path) -> None:
    report = (bench_out / "results.md").read_text()
    machine = json.loads((bench_out / "meta.json").read_text())["machine"]
    assert report.splitlines()[2] == machine_line(machine)
    assert report.splitlines()[7].startswith("retriever bench ")
    assert "## prompteol, mean pooling" in report and "## prompteol, last pooling" in report
    dense_rows = re.findall(
        r"^\| embedfilter \| edge \| \d \| \d+ \| (?:Flat|HNSW16) \|", report, re.M
    )
    assert len(dense_rows) == 2 * 2 * 2
    assert (bench_out / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_second_run_reuses_the_cached_embeddings(
    bench_out: Path, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from retriever.data.datasets import load_corpus
    from retriever.encode.encoder import Encoder

    documents = {d.embedding_text for d in load_corpus(SCIFACT, limit=80).documents}

    def no_corpus_encoding(self, texts, poolings, **kwargs):
        # Queries are still encoded live, but only to time the LLM forward: the rankings
        # come from the stored embeddings (test_every_row_is_what_searcher_returns...).
        if documents & set(texts):
            raise AssertionError("the corpus was encoded again")
        return original(self, texts, poolings, **kwargs)

    original = Encoder.encode_poolings
    monkeypatch.setattr(Encoder, "encode_poolings", no_corpus_encoding)
    code = main(
        [
            "bench",
            str(SCIFACT),
            "--model",
            str(tiny_model),
            "--limit",
            "80",
            "--pooling",
            "last",
            "--taus",
            "1,8",
            "--bands",
            "head",
            "--baselines",
            "none",
            "--no-mean-direction",
            "--no-sparse",
            "--no-bm25",
            "--no-alignment",
            "--dtype",
            "float32",
            "--out",
            str(tmp_path / "again"),
        ]
    )
    assert code == 0
    rows = json.loads((tmp_path / "again" / "results.json").read_text())
    assert [(r["method"], r["tau"]) for r in rows] == [("unfiltered", 1), ("embedfilter", 8)]
    assert not (tmp_path / "again" / "alignment.json").exists()


def test_bench_user_mistakes(tiny_model: Path, tmp_path: Path, capsys) -> None:
    for flags, message in [
        (["--bands", "middle"], "unknown band 'middle'"),
        (["--baselines", "lda"], "unknown baseline 'lda'"),
        (["--taus", "1,x"], "--taus must be numbers"),
        (["--taus", "0.5"], "--tau must be a finite number >= 1"),
        (["--pooling", "max"], "unknown pooling 'max'"),
        (["--fusion", "max"], "unknown fusion 'max'"),
        (["--sparse-doc-tokens", "0"], "--sparse-doc-tokens must be at least 1"),
    ]:
        code = main(
            [
                "bench",
                str(SCIFACT),
                "--model",
                str(tiny_model),
                "--out",
                str(tmp_path / "o"),
                *flags,
            ]
        )
        assert code == 2 and message in capsys.readouterr().err


def test_scaling_mode(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "scaling"
    code = main(
        [
            "bench",
            str(SCIFACT),
            "--model",
            str(tiny_model),
            "--scaling",
            "--sizes",
            "2000,6000",
            "--taus",
            "1,4",
            "--dtype",
            "float32",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    report = json.loads((out / "scaling.json").read_text())
    rows = report["rows"]
    assert [(r["n"], r["dim"], r["index_type"]) for r in rows] == [
        (n, dim, kind)
        for dim in (32, 8)
        for n in (2000, 6000)
        for kind in ("Flat", f"{ivfpq_type(n, dim)} nprobe=16")
    ]
    flats = {(r["n"], r["dim"]): r for r in rows if r["index_type"] == "Flat"}
    for (n, dim), row in flats.items():
        assert row["recall_at_10_vs_flat"] == 1.0
        assert row["index_bytes"] >= n * dim * 4  # d float32 per vector
    approx = [r for r in rows if r["index_type"] != "Flat"]
    assert all(0.0 <= r["recall_at_10_vs_flat"] <= 1.0 for r in approx)
    assert all(0.0 <= r["doc_recall_at_10_vs_flat"] <= 1.0 for r in approx)
    assert all(r["doc_recall_at_10_vs_flat"] == 1.0 for r in flats.values())
    assert all("nprobe=16" in r["index_type"] for r in approx)
    assert "| 6,000 | 4 | 8 | Flat |" in (out / "scaling.md").read_text()
    assert (out / "scaling.png").read_bytes()[:4] == b"\x89PNG"


def test_milvus_lite_rows_match_faiss_flat(bench_out: Path) -> None:
    rows = json.loads((bench_out / "results.json").read_text())
    milvus = [r for r in rows if r["index_type"] == "milvus:Flat"]
    assert milvus
    for row in milvus:
        flat = next(
            r
            for r in rows
            if r["index_type"] == "Flat"
            and (r["method"], r["band"], r["tau"], r["pooling"])
            == (row["method"], row["band"], row["tau"], row["pooling"])
        )
        assert row["ndcg_at_10"] == pytest.approx(flat["ndcg_at_10"], abs=0.001)
        assert row["search_ms_p50"] > 0 and row["index_bytes"] > 0


# --- one path: the benchmark's rows are what Searcher answers on the same folders -------


@pytest.fixture(scope="module")
def kept_bench(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    from retriever.evaluation.bench import BenchModel, BenchSettings, run_bench

    root = tmp_path_factory.mktemp("kept-bench")
    settings = BenchSettings(
        taus=(1, 2),
        bands=("edge",),
        baselines=("pca",),
        index_types=("Flat", "HNSW16"),
        alignment=False,
        latency_queries=3,
        warmup=1,
        k=20,
        keep_indexes=root / "indexes",
    )
    model = BenchModel(name=str(tiny_model), dtype="float32")
    return run_bench(SCIFACT, root / "results", model, settings, limit=60)


def test_every_row_is_what_searcher_returns_for_its_folder(kept_bench: list[dict]) -> None:
    from retriever import Searcher
    from retriever.data.datasets import load_queries
    from retriever.evaluation.bench.run import BENCH_STORE
    from retriever.evaluation.metrics import judged_queries
    from retriever.store.encoding import cached_embeddings

    qrels = load_qrels(SCIFACT)
    queries = judged_queries(load_queries(SCIFACT), qrels)
    texts = list(queries.values())
    fixed = [r for r in kept_bench if not (r["fusion"] or "").startswith("cv")]
    assert {r["family"] for r in fixed} == {"dense", "sparse", "lexical", "hybrid"}
    methods = {"dense": "dense", "sparse": "sparse", "lexical": "bm25"}
    for row in fixed:
        method = methods.get(row["family"]) or row["method"].replace("keytokens", "sparse")
        searcher = Searcher.load(row["index_folder"], dtype="float32")
        try:
            # The queries' stored embeddings, as the benchmark searched them: the same
            # vectors, so the same hits to the last digit.
            embeddings = cached_embeddings(
                searcher.encoder,
                texts,
                [row["pooling"]],
                queries=True,
                precision=BENCH_STORE["precision"],
                show_progress=False,
            )[row["pooling"]]
            found = searcher.rank(
                texts,
                20,
                method=method,
                fusion=row["fusion"] or "rrf",
                embeddings=embeddings,
                query_ids=list(queries),
            )
        finally:
            searcher.close()
        results = Path(row["index_folder"]).parents[2] / "results"
        expected = read_trec_run(results / row["run_file"])
        got = {q: d for q, d in found.to_beir().items() if d}  # TREC files list no empty run
        assert {q: list(d) for q, d in got.items()} == {q: list(d) for q, d in expected.items()}
        for q, scores in expected.items():
            assert list(got[q].values()) == pytest.approx(list(scores.values()), rel=1e-6)
        assert evaluate_run(qrels, found)["ndcg_at_10"] == pytest.approx(row["ndcg_at_10"])
