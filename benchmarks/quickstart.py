"""The README's quickstart, timed as a newcomer runs it: `bash scripts/quickstart.sh` from
nothing (no index; the set-up already done, the embedded model converted once) to ranked
hits with their shared words. Each repeat builds into a fresh folder, one after another;
the report gives every wall time, the CPU and the dtype `--dtype auto` picked on it, and
the last run's output.

    python benchmarks/quickstart.py --out benchmarks/results/quickstart
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch
from inputs import ROOT
from report import machine_record, write_report

from retriever.core.spec import DEFAULT_MODEL
from retriever.encode.models import pick_dtype, resolve_model
from retriever.encode.weights import weights_origin

SCRIPT = "scripts/quickstart.sh"


def run_once(index: Path) -> tuple[float, str]:
    """Wall seconds of one quickstart into ``index``, and what it printed."""
    start = time.perf_counter()
    done = subprocess.run(
        ["bash", SCRIPT],
        cwd=ROOT,
        env={**os.environ, "INDEX": str(index)},
        capture_output=True,
        text=True,
        check=True,
    )
    return time.perf_counter() - start, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs from nothing (default 3)")
    parser.add_argument("--out", required=True, help="results folder")
    args = parser.parse_args()
    resolved = resolve_model(DEFAULT_MODEL)  # the set-up's one-off conversion, not timed
    seconds, output = [], ""
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(args.repeats):
            took, output = run_once(Path(scratch) / f"quickstart-{repeat}")
            seconds.append(took)
    dtype = str(pick_dtype("auto", torch.device("cpu"))).removeprefix("torch.")
    record = {
        "dtype": dtype,
        "script": SCRIPT,
        "seconds": [round(s, 2) for s in seconds],
        "median_seconds": round(statistics.median(seconds), 2),
        "output": output,
    }
    body = [
        f"`--dtype auto` picked {dtype}.",
        "",
        f"`bash {SCRIPT}` from no index to hits, {args.repeats} runs one after another: "
        + ", ".join(f"{s:.1f} s" for s in seconds)
        + f" (median {statistics.median(seconds):.1f} s).",
        "",
        "The last run printed:",
        "",
        "```",
        output.rstrip(),
        "```",
    ]
    machine = machine_record(dtype=dtype, weights=weights_origin(resolved))
    write_report(args.out, "quickstart", record, body, title="Quickstart, timed", machine=machine)


if __name__ == "__main__":
    main()
