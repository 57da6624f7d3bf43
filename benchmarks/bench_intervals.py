"""A `retriever bench` run's nDCG@10 ratios with their paired bootstrap intervals.

Reads a bench results folder: its per_query.jsonl (each row's nDCG@10 per judged query,
which `retriever bench` writes), or, for a run from before bench wrote one, its run files
scored against the dataset's judgements, which then writes per_query.jsonl and
runs.sha256 into that folder the way bench does. Each row's ratio is to the unfiltered
dense row of its setting and index type (the first index type for non-dense rows), as in
the run's own tables; the interval resamples the queries 1,000 times (seed 0). Nothing is
encoded or searched: the figures are the stored run's.

    python benchmarks/bench_intervals.py --results benchmarks/results/scifact-smollm2 \
        --out benchmarks/results/scifact-smollm2-intervals
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from inputs import SCIFACT, dataset_path
from report import markdown_table, write_report

from retriever.data.datasets import load_qrels
from retriever.evaluation.bench.run import write_run_checksums
from retriever.evaluation.intervals import RatioInterval, paired_ratio_interval
from retriever.evaluation.metrics import (
    PER_QUERY,
    per_query_metrics,
    read_trec_run,
    write_per_query,
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, required=True, help="a bench results folder")
    parser.add_argument("--dataset", type=dataset_path, default=SCIFACT)
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", type=Path, required=True)
    return parser.parse_args()


def per_query_scores(results: Path, rows: list[dict[str, Any]], args: argparse.Namespace):
    """(query ids, run file -> nDCG@10 per query): from per_query.jsonl, or scored from the
    run files (and then written there, with the runs' checksums)."""
    stored = results / "per_query.jsonl"
    if not stored.exists():
        qrels = load_qrels(args.dataset, args.split)
        for row in rows:
            scored = per_query_metrics(qrels, read_trec_run(results / row["run_file"]))
            row[PER_QUERY] = [scored[q]["ndcg_at_10"] for q in qrels]
        write_per_query(stored, list(qrels), (({"run": r["run_file"]}, r[PER_QUERY]) for r in rows))
        write_run_checksums(results, rows)
    head, *lines = stored.read_text().splitlines()
    scores = {entry["run"]: entry["ndcg_at_10"] for entry in map(json.loads, lines)}
    return json.loads(head)["query_ids"], scores


def ratio_rows(rows: list[dict[str, Any]], scores: dict[str, list[float]]) -> list[dict[str, Any]]:
    """Each row's nDCG@10 ratio to its baseline, with the interval."""
    first_type = rows[0]["index_type"]
    found = []
    for row in rows:
        own_type = row["index_type"] if row["family"] == "dense" else first_type
        base = next(
            r
            for r in rows
            if r["method"] == "unfiltered"
            and r["index_type"] == own_type
            and (r["prompt"], r["pooling"]) == (row["prompt"], row["pooling"])
        )
        interval = paired_ratio_interval(scores[row["run_file"]], scores[base["run_file"]])
        labels = ("prompt", "pooling", "family", "method", "source", "band", "tau", "fusion")
        found.append(
            {
                **{key: row.get(key) for key in (*labels, "index_type", "ndcg_at_10")},
                "run_file": row["run_file"],
                **interval.as_dict(),
            }
        )
    return found


# The default filter: EmbedFilter's edge band with the mean direction removed.
DEFAULT_FILTER = ("embedfilter-nomean", "edge")


def default_against_others(
    rows: list[dict[str, Any]], scores: dict[str, list[float]]
) -> list[dict[str, Any]]:
    """The default filter's nDCG@10 over each other dense row of the same setting, tau
    and index type, with the interval: whether its lead (or deficit) is beyond noise."""
    dense = [r for r in rows if r["family"] == "dense"]
    found = []
    for row in dense:
        if (row["method"], row["band"]) != DEFAULT_FILTER:
            continue
        for other in dense:
            same = ("prompt", "pooling", "tau", "index_type")
            if (
                other is row
                or any(other[k] != row[k] for k in same)
                or other["method"] == ("unfiltered")
            ):
                continue
            interval = paired_ratio_interval(scores[row["run_file"]], scores[other["run_file"]])
            found.append(
                {
                    **{key: row[key] for key in same},
                    "other": f"{other['method']} {other['band'] or ''}".strip(),
                    **interval.as_dict(),
                    "verdict": _order(interval),
                }
            )
    return found


def _order(interval: RatioInterval) -> str:
    if interval.low > 1:
        return "default higher"
    if interval.high < 1:
        return "default lower"
    return "within noise"


def versus_body(versus: list[dict[str, Any]]) -> list[str]:
    lines = [
        "",
        "## The default filter against the other filters",
        "",
        "The default (EmbedFilter's edge band, mean direction removed) over each other "
        "dense row of the same setting, tau and index type: its nDCG@10 ratio with the "
        "same kind of interval.",
        "",
    ]
    header = ["setting", "tau", "index", "against", "ratio", "verdict"]
    cells = [
        [
            f"{v['prompt']}, {v['pooling']}",
            f"{v['tau']:g}",
            v["index_type"],
            v["other"],
            RatioInterval(v["ratio"], v["low"], v["high"]).shown(2),
            v["verdict"],
        ]
        for v in versus
    ]
    return lines + markdown_table(header, cells)


def report_body(found: list[dict[str, Any]], source: str, queries: int) -> list[str]:
    lines = [
        f"The stored run in `{source}` ({queries} judged queries): its run files scored per "
        "query, each nDCG@10 ratio to the unfiltered dense row of its setting and index type "
        "with a 95% paired bootstrap interval over the queries (1,000 resamples, seed 0). "
        "This machine ran the resampling only; the run's own machine is in its folder.",
        "",
    ]
    header = ["setting", "method", "from", "band", "tau", "fusion", "index", "nDCG@10", "ratio"]
    cells = [
        [
            f"{r['prompt']}, {r['pooling']}",
            r["method"],
            r["source"] or "",
            r["band"] or "",
            "" if r["tau"] is None else f"{r['tau']:g}",
            r["fusion"] or "",
            r["index_type"],
            f"{r['ndcg_at_10']:.4f}",
            RatioInterval(r["ratio"], r["low"], r["high"]).shown(2),
        ]
        for r in found
    ]
    return lines + markdown_table(header, cells)


def main() -> None:
    args = parse_args()
    rows = json.loads((args.results / "results.json").read_text())
    query_ids, scores = per_query_scores(args.results, rows, args)
    found = ratio_rows(rows, scores)
    versus = default_against_others(rows, scores)
    source = args.results.resolve().relative_to(Path(__file__).resolve().parents[1])
    write_report(
        args.out,
        "intervals",
        {"source": str(source), "queries": len(query_ids), "rows": found, "versus": versus},
        report_body(found, str(source), len(query_ids)) + versus_body(versus),
        title=f"nDCG@10 ratios with their intervals: {source.name}",
    )


if __name__ == "__main__":
    main()
