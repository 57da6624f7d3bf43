"""`retriever eval` on a tiny-model index of a SciFact slice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from retriever import build_index
from retriever.cli import main
from retriever.datasets import load_qrels
from retriever.evaluation import evaluate_run, read_trec_run
from tests.conftest import SHARED_SCIFACT


def test_eval_reports_metrics_latency_and_sizes(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    index = build_index(
        SHARED_SCIFACT, tmp_path / "idx", model=str(tiny_model), limit=120, dtype="float32"
    )
    report_path, run_path = tmp_path / "report.json", tmp_path / "run.trec.gz"
    code = main(
        [
            "eval",
            str(index),
            str(SHARED_SCIFACT),
            "--json",
            str(report_path),
            "--run",
            str(run_path),
            "--dtype",
            "float32",
        ]
    )
    assert code == 0
    report = json.loads(report_path.read_text())
    assert report["queries"] == 300 and report["k"] == 100
    for key in ("ndcg_at_10", "ndcg_at_100", "recall_at_100", "map_at_100"):
        assert 0.0 <= report[key] <= 1.0
    assert 0 < report["search_ms_p50"] <= report["search_ms_p95"]
    assert 0 < report["encode_ms_p50"] <= report["encode_ms_p95"]
    assert report["batch_qps"] > 0
    assert report["index_bytes"] == (index / "index.faiss").stat().st_size
    assert report["folder_bytes"] > report["index_bytes"] + report["docstore_bytes"]
    run = read_trec_run(run_path)
    assert len(run) == 300 and {len(hits) for hits in run.values()} == {100}
    assert evaluate_run(load_qrels(SHARED_SCIFACT), run)["ndcg_at_10"] == pytest.approx(
        report["ndcg_at_10"], abs=1e-6
    )
    assert "ndcg_at_10" in capsys.readouterr().out


def test_eval_user_mistakes(tiny_model: Path, tmp_path: Path, capsys) -> None:
    index = build_index(
        SHARED_SCIFACT, tmp_path / "idx", model=str(tiny_model), limit=20, dtype="float32"
    )
    code = main(["eval", str(index), str(SHARED_SCIFACT), "--split", "train"])
    assert code == 2 and "has no qrels/train.tsv" in capsys.readouterr().err
    code = main(["eval", str(index), str(tmp_path)])
    assert code == 2 and "has no queries.jsonl" in capsys.readouterr().err
