from __future__ import annotations

import math
from pathlib import Path

import pytest
from threadpoolctl import threadpool_info

from retriever.core.errors import RetrieverError
from retriever.core.threads import numpy_blas_on_one_thread
from retriever.evaluation.metrics import (
    evaluate_run,
    judged_queries,
    read_trec_run,
    write_trec_run,
)

QRELS = {"q1": {"a": 1, "c": 2}, "q2": {"b": 1}}
RUN = {
    "q1": {"a": 3.0, "b": 2.0, "c": 1.0},  # relevant at ranks 1 (gain 1) and 3 (gain 2)
    "q2": {"a": 2.0, "b": 1.0},  # relevant at rank 2
}


def test_ndcg_recall_and_map_by_hand() -> None:
    # pytrec_eval's nDCG uses gain = relevance and discount log2(rank + 1).
    dcg_q1 = 1 / math.log2(2) + 2 / math.log2(4)
    ideal_q1 = 2 / math.log2(2) + 1 / math.log2(3)
    ndcg_q2 = (1 / math.log2(3)) / 1.0
    metrics = evaluate_run(QRELS, RUN)
    assert metrics["ndcg_at_10"] == pytest.approx((dcg_q1 / ideal_q1 + ndcg_q2) / 2, abs=1e-6)
    assert metrics["ndcg_at_100"] == pytest.approx(metrics["ndcg_at_10"])
    assert metrics["recall_at_100"] == pytest.approx(1.0)
    # AP: q1 = (1/1 + 2/3) / 2, q2 = 1/2.
    assert metrics["map_at_100"] == pytest.approx(((1 + 2 / 3) / 2 + 0.5) / 2, abs=1e-6)


def test_a_query_missing_from_the_run_counts_as_zero() -> None:
    alone = evaluate_run({"q2": QRELS["q2"]}, RUN)["ndcg_at_10"]
    both = evaluate_run(QRELS, {"q2": RUN["q2"]})["ndcg_at_10"]
    assert both == pytest.approx(alone / 2)


def test_trec_run_round_trip(tmp_path: Path) -> None:
    for name in ("run.trec", "run.trec.gz"):
        path = write_trec_run(RUN, tmp_path / name, tag="t")
        assert read_trec_run(path) == RUN
    first = (tmp_path / "run.trec").read_text().splitlines()[0]
    assert first == "q1 Q0 a 1 3 t"
    # Reciprocal-rank sums that differ in the 7th decimal stay apart in the file.
    close = {"q": {"a": 1 / 61 + 1 / 62, "b": 1 / 61 + 1 / 62 + 2e-7, "c": 1 / 60}}
    path = write_trec_run(close, tmp_path / "close.trec")
    assert read_trec_run(path)["q"] == pytest.approx(close["q"], rel=1e-8)
    assert len(set(read_trec_run(path)["q"].values())) == 3


def test_a_gzipped_run_rewrites_to_the_same_bytes(tmp_path: Path) -> None:
    first = write_trec_run(RUN, tmp_path / "a.trec.gz").read_bytes()
    assert first[4:8] == bytes(4)  # gzip's mtime field: no timestamp to differ by
    assert write_trec_run(RUN, tmp_path / "b.trec.gz").read_bytes() == first


def test_judged_queries_and_empty_qrels() -> None:
    assert judged_queries({"q1": "x", "q9": "y"}, QRELS) == {"q1": "x"}
    with pytest.raises(RetrieverError, match="none of the queries"):
        judged_queries({"q9": "y"}, QRELS)
    with pytest.raises(RetrieverError, match="no relevance judgements"):
        evaluate_run({}, RUN)


def test_benchmarks_put_numpys_blas_on_one_thread_and_leave_faiss_alone() -> None:
    # FAISS's own OpenBLAS, loaded with it, must keep its threads.
    from retriever.parts.dense.faiss_install import faiss  # noqa: F401

    def blas_threads() -> dict[str, tuple[str, int]]:
        return {
            lib["filepath"]: (lib.get("threading_layer"), lib["num_threads"])
            for lib in threadpool_info()
            if lib["user_api"] == "blas"
        }

    before = blas_threads()
    assert any(layer == "pthreads" for layer, _ in before.values())  # numpy's wheel
    with numpy_blas_on_one_thread():
        inside = blas_threads()
    for path, (layer, threads) in inside.items():
        assert threads == (1 if layer == "pthreads" else before[path][1])
    assert blas_threads() == before
