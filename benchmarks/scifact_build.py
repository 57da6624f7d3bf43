"""The full SciFact build with the default model, before and after, in one run.

Runs `retriever index ../shared/datasets/scifact` (SmolLM2-135M, default settings but
the paper's edge band, which the older code built by default) with
the code of git revision --before and with --after (default: this working tree), one
after the other, each through its own `retriever` command; records each build's wall
time and peak RSS (os.wait4), evaluates both indexes with their own `retriever eval`, and
compares their vectors row by row.

    python benchmarks/scifact_build.py --before 8cf8c1c --out benchmarks/results/scifact-build
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from inputs import SCIFACT, dataset_path
from report import machine_record, markdown_table, write_report
from revisions import Code, add_revision_options, cli_words, code_trees, run_cli

from retriever.core.spec import DEFAULT_MODEL
from retriever.encode.models import resolve_model
from retriever.encode.weights import weights_origin
from retriever.index.manifest import current_manifest
from retriever.parts.dense.faiss_index import INDEX_FILE


def index_vectors(path: Path) -> Any:
    """Vectors in document order, from a Flat index's file (plain or with an ID map)."""
    import faiss
    import numpy as np

    loaded = faiss.read_index(str(path / INDEX_FILE))  # owns what downcast views
    index = faiss.downcast_index(loaded)
    if isinstance(index, faiss.IndexIDMap2):
        keys = faiss.vector_to_array(index.id_map)
        vectors = faiss.downcast_index(index.index).reconstruct_n(0, index.ntotal)
        return vectors[np.argsort(keys)]
    return index.reconstruct_n(0, index.ntotal)


def model_flags(args: argparse.Namespace) -> list[str]:
    return ["--model", args.model] if args.model else []


def build_and_evaluate(
    code: Code, args: argparse.Namespace, folder: Path, scratch: Path
) -> dict[str, Any]:
    """``code``'s own `retriever index`, timed, then its own `retriever eval` of the result."""
    argv = ["index", str(args.dataset), "--out", str(folder), *model_flags(args)]
    accepted = cli_words(code, "index")
    if "--no-remove-mean-direction" in accepted:
        # The paper's edge band, the older code's default, so that both build one filter.
        argv.append("--no-remove-mean-direction")
    if "--restart" in accepted:
        # Encoded afresh into the default store (which later `retriever index` and
        # `retriever bench` runs of SciFact then reuse), not read back from it.
        argv.append("--restart")
    build = run_cli(code, argv, cwd=scratch)
    report = scratch / f"{code.side}-eval.json"
    evaluate = ["-q", "eval", str(folder), str(args.dataset), "--json", str(report)]
    run_cli(code, evaluate, cwd=scratch)
    row = json.loads(report.read_text())["rows"][0]
    return {
        "seconds": round(build.seconds, 1),
        "peak_rss_mib": round(build.peak_rss_mib, 1),
        "ndcg_at_10": row["ndcg_at_10"],
        "recall_at_100": row["recall_at_100"],
        "index_bytes": row["index_bytes"],
    }


def measure(args: argparse.Namespace, scratch: Path) -> tuple[dict[str, Any], list[Code]]:
    import numpy as np

    codes = code_trees(args.before, args.after, scratch)
    # Convert and hash the model once, outside the timed builds.
    warm = ["index", str(args.dataset), "--out", str(scratch / "warm"), "--limit", "2"]
    run_cli(codes[1], [*warm, *model_flags(args)], cwd=scratch)
    results = {}
    for code in codes:
        folder = scratch / f"index-{code.side}"
        results[code.side] = build_and_evaluate(code, args, folder, scratch)
        print(code.side, json.dumps(results[code.side]), flush=True)
    old = index_vectors(scratch / "index-before")
    new = index_vectors(scratch / "index-after")
    results["vectors"] = {
        "rows": [len(old), len(new)],
        "max_abs_difference": float(np.abs(old - new).max()),
        "identical": bool(np.array_equal(old, new)),
    }
    return results, codes


def built_machine(args: argparse.Namespace, index: Path) -> dict[str, Any]:
    """The machine record of a build: the dtype its manifest says it ran in, and the
    weights of the model it was given."""
    weights = weights_origin(resolve_model(args.model or DEFAULT_MODEL))
    return machine_record(dtype=current_manifest(index).model["dtype"], weights=weights)


def report_body(results: dict[str, Any]) -> list[str]:
    vectors, meta = results["vectors"], results["meta"]
    rows = []
    for side in ("before", "after"):
        r = results[side]
        rows.append(
            [
                side,
                f"{r['seconds']:,.1f}",
                f"{r['peak_rss_mib']:,.0f}",
                f"{r['ndcg_at_10']:.4f}",
                f"{r['recall_at_100']:.4f}",
                f"{r['index_bytes']:,}",
            ]
        )
    header = ["version", "wall s", "peak RSS MiB", "nDCG@10", "Recall@100", "index bytes"]
    return [
        f"`retriever index {meta['dataset']}` with the default settings ({meta['model']}, "
        "dtype auto, PromptEOL, mean pooling, Flat), each with the paper's edge band at tau 2 "
        "(the older code's default; `--no-remove-mean-direction` where the code has it); "
        "before = "
        f"{meta['before']}, after = {meta['after']}.",
        "",
        *markdown_table(header, rows),
        "",
        f"Vectors: {vectors['rows'][0]} and {vectors['rows'][1]} rows; identical: "
        f"{vectors['identical']}; largest absolute difference "
        f"{vectors['max_abs_difference']:.3g}.",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_revision_options(parser)
    parser.add_argument("--dataset", type=dataset_path, default=SCIFACT, help="BEIR dataset folder")
    parser.add_argument(
        "--model", default=None, help="model to build with (default: the CLI's, SmolLM2-135M)"
    )
    parser.add_argument("--out", default="benchmarks/results/scifact-build", help="results folder")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="scifact-build-") as scratch:
        results, codes = measure(args, Path(scratch))
        machine = built_machine(args, Path(scratch) / "index-after")
    results["meta"] = {
        "before": codes[0].label,
        "after": codes[1].label,
        "dataset": args.dataset.name,
        "model": args.model or "SmolLM2-135M",
    }
    write_report(
        args.out,
        "scifact_build",
        results,
        report_body(results),
        title="Full SciFact build, before and after",
        machine=machine,
    )


if __name__ == "__main__":
    main()
