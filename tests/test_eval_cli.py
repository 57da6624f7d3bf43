"""`retriever eval` on a tiny-model index of a SciFact slice, every method side by side."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from retriever import build_index
from retriever.cli import main
from retriever.core.spec import IndexSpec, ModelSpec
from retriever.data.datasets import load_qrels
from retriever.evaluation.metrics import evaluate_run, read_trec_run
from retriever.index.options import BuildOptions
from retriever.parts.sparse import SparseSpec
from tests.conftest import SCIFACT, require_scifact


@pytest.fixture(scope="module", autouse=True)
def _needs_scifact() -> None:
    require_scifact()


def test_eval_reports_every_method_with_latency_and_sizes(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    index = build_index(
        SCIFACT,
        tmp_path / "idx",
        IndexSpec(
            model=ModelSpec(name=str(tiny_model), dtype="float32"),
            sparse=SparseSpec(doc_tokens=40, query_tokens=10),
            bm25=True,
        ),
        BuildOptions(limit=120),
    )
    report_path, runs = tmp_path / "report.json", tmp_path / "runs"
    code = main(
        ["eval", str(index), str(SCIFACT), "--json", str(report_path), "--runs", str(runs)]
        + ["--dtype", "float32"]
    )
    assert code == 0
    report = json.loads(report_path.read_text())
    rows = {(row["method"], row["fusion"]): row for row in report["rows"]}
    assert list(rows) == [
        ("dense", None),
        ("sparse", None),
        ("bm25", None),
        ("dense+sparse", "rrf"),
        ("dense+sparse", "weighted"),
        ("dense+bm25", "rrf"),
        ("dense+bm25", "weighted"),
    ]
    sizes = report["bytes"]
    assert sizes["dense"] == (index / "index.faiss").stat().st_size
    assert sizes["folder"] > sizes["dense"] + sizes["sparse"] + sizes["bm25"] + sizes["docstore"]
    for (method, fusion), row in rows.items():
        assert row["queries"] == 300 and row["k"] == 100
        for key in ("ndcg_at_10", "ndcg_at_100", "recall_at_100", "map_at_100"):
            assert 0.0 <= row[key] <= 1.0
        assert 0 < row["search_ms_p50"] <= row["search_ms_p95"]
        assert row["batch_qps"] > 0
        assert row["index_bytes"] == sum(sizes[part] for part in method.split("+"))
        # BM25 needs no LLM forward; every other method encodes the query.
        assert (row["encode_ms_p50"] == 0) == (method == "bm25")
        name = method.replace("+", "-") + (f"-{fusion}" if fusion else "")
        run = read_trec_run(runs / f"{name}.trec.gz")
        assert len(run) <= 300 and all(len(hits) <= 100 for hits in run.values())
        assert evaluate_run(load_qrels(SCIFACT), run)["ndcg_at_10"] == pytest.approx(
            row["ndcg_at_10"], abs=1e-6
        )
    # 120 documents hold a few gold documents that BM25 finds by their words.
    assert rows[("bm25", None)]["ndcg_at_10"] > rows[("dense", None)]["ndcg_at_10"]
    out = capsys.readouterr().out
    assert "dense+bm25" in out and "nDCG@10" in out


def test_eval_of_chosen_methods_and_user_mistakes(tiny_model: Path, tmp_path: Path, capsys) -> None:
    index = build_index(
        SCIFACT,
        tmp_path / "idx",
        IndexSpec(model=ModelSpec(name=str(tiny_model), dtype="float32")),
        BuildOptions(limit=20),
    )
    code = main(["eval", str(index), str(SCIFACT), "--split", "train"])
    assert code == 2 and "has no qrels/train.tsv" in capsys.readouterr().err
    code = main(["eval", str(index), str(tmp_path)])
    assert code == 2 and "has no queries.jsonl" in capsys.readouterr().err
    code = main(["eval", str(index), str(SCIFACT), "--methods", "dense,bm25"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot answer 'bm25'" in err and "--bm25" in err
    code = main(["eval", str(index), str(SCIFACT), "--fusion", "max"])
    assert code == 2 and "--fusion takes a comma list" in capsys.readouterr().err
    report = tmp_path / "dense.json"
    code = main(["eval", str(index), str(SCIFACT), "--methods", "dense", "--json", str(report)])
    assert code == 0 and [r["method"] for r in json.loads(report.read_text())["rows"]] == ["dense"]
