"""Every benchmark behind benchmarks/results/, by name, with the command that produced it.

    python benchmarks/run_all.py --list                  # each benchmark, command, folder
    python benchmarks/run_all.py                         # regenerate every published result
    python benchmarks/run_all.py scifact-build search-loop   # only these
    python benchmarks/run_all.py --quick                 # smoke run: small inputs, temp folder

A full run writes into benchmarks/results/NAME (or --out ROOT/NAME) and takes hours on 2
cores; run it on a quiet machine, since latencies are measured. --quick runs the same
commands with a tiny random model and a slice of SciFact appended as overrides, into a
temporary folder (or --out ROOT): it proves that every benchmark still starts and writes
its report, in a few minutes. GPU benchmarks run only when named.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from inputs import ROOT, SCIFACT, dataset_path, save_tiny_model, write_slice

RESULTS = ROOT / "benchmarks" / "results"
CLI = "retriever"
# Modules of benchmarks/ that are not benchmarks themselves.
SUPPORT_MODULES = frozenset({"inputs.py", "report.py", "revisions.py", "run_all.py"})


@dataclass(frozen=True)
class Benchmark:
    """A benchmark: the command that writes benchmarks/results/NAME, and what --quick adds
    to it. Commands may hold {dataset} (SciFact; its slice under --quick), {scifact}
    (SciFact always), {out} (the results folder) and, under --quick, {model} (the tiny
    model) and {index} (a tiny index with its sparse and BM25 parts)."""

    name: str
    program: str  # "retriever", or a script of benchmarks/
    command: str
    quick: str
    gpu: bool = False

    def argv(self, values: Mapping[str, str], *, quick: bool) -> list[str]:
        command = f"{self.command} {self.quick}" if quick else self.command
        return [part.format_map(values) for part in shlex.split(command)]

    def shown(self, values: Mapping[str, str], *, quick: bool = False) -> str:
        program = CLI if self.program == CLI else f"python benchmarks/{self.program}"
        return f"{program} {shlex.join(self.argv(values, quick=quick))}"


BENCH_QUICK = "--model {model} --dtype float32 --taus 2 --bands edge --baselines none --cv-folds 2"
BENCHMARKS = (
    Benchmark(
        "scifact-smollm2",
        CLI,
        "bench {dataset} --prompt prompteol,echo --pooling mean,last --dtype bfloat16 --out {out}",
        BENCH_QUICK,
    ),
    Benchmark(
        "scifact-smollm2-intervals",
        "bench_intervals.py",
        "--results benchmarks/results/scifact-smollm2 --dataset {scifact} --out {out}",
        "",
    ),
    Benchmark(
        "scifact-smollm2-scaling",
        CLI,
        "bench {dataset} --scaling --prompt prompteol --pooling mean --dtype bfloat16 --out {out}",
        "--model {model} --dtype float32 --taus 2 --sizes 2000",
    ),
    Benchmark(
        "scifact-milvus",
        CLI,
        "-q bench {dataset} --taus 1,2,4 --bands edge --baselines none --no-sparse --no-bm25 "
        "--no-alignment --index-types Flat milvus:Flat --out {out}",
        "--model {model} --dtype float32 --taus 2",
    ),
    Benchmark(
        "scifact-smollm2-gpu",
        CLI,
        "bench {dataset} --prompt prompteol --pooling mean,last --dtype bfloat16 --device cuda "
        "--batch-size 64 --gpu --index-types Flat IVF256,Flat --out {out}",
        BENCH_QUICK + " --index-types Flat",
        gpu=True,
    ),
    Benchmark(
        "scifact-smollm2-scaling-gpu",
        CLI,
        "bench {dataset} --scaling --prompt prompteol --pooling mean --dtype bfloat16 "
        "--device cuda --batch-size 64 --gpu --sizes 10000,100000,1000000 --out {out}",
        "--model {model} --dtype float32 --taus 2 --sizes 2000",
        gpu=True,
    ),
    Benchmark(
        "build-scaling",
        "build_scaling.py",
        "--before 8cf8c1c --sizes 10000,100000,1000000 --out {out}",
        "--sizes 100,200",
    ),
    Benchmark(
        "scifact-build",
        "scifact_build.py",
        "--before 8cf8c1c --out {out}",
        "--dataset {dataset} --model {model}",
    ),
    Benchmark(
        "resume-scifact",
        "resume_scifact.py",
        "--kills 3 --slices 0 --out {out}",
        "--dataset {scifact} --model {model} --batch-size 1 --limit 200 --kills 1",
    ),
    Benchmark("bm25-memory", "bm25_memory.py", "--copies 1,4 --out {out}", "--dataset {dataset}"),
    Benchmark(
        "encoder-throughput",
        "encoder_throughput.py",
        "--out {out}",
        "--dataset {dataset} --model {model} --docs 16 --repeats 1 --dtype float32",
    ),
    Benchmark(
        "cpu-runtime",
        "cpu_runtime.py",
        "--out {out}",
        "--dataset {dataset} --model {model} --docs 16 --repeats 1",
    ),
    Benchmark(
        "query-overhead",
        "query_overhead.py",
        "--before f8fac94 --out {out}",
        "--dataset {dataset} --queries 5 --repeats 1 --methods dense,dense+bm25",
    ),
    Benchmark(
        "lens-display",
        "lens_display.py",
        "--docs 500 --out {out}",
        "--dataset {dataset} --model {model} --docs 20 --dtype float32",
    ),
    Benchmark(
        "blas-threshold",
        "blas_threshold.py",
        "--out {out}",
        "--sizes 2000 --dims 72 --batches 16 --crossover-size 2000 --crossover-batches 1,16 "
        "--after-numpy-size 1000 --repeats 1",
    ),
    Benchmark(
        "search-loop",
        "search_loop.py",
        "--before 3b8d687 --out {out}",
        "--dataset {dataset} --model {model} --queries 5 --rounds 1 --methods dense,bm25",
    ),
    Benchmark("quickstart", "quickstart.py", "--out {out}", "--repeats 1"),
    Benchmark(
        "integrity-cost",
        "integrity_cost.py",
        "--dataset {dataset} --limit 100 --out {out}",
        "--model {model} --dtype float32 --limit 20 --vectors 20000 --dim 32 --repeats 3",
    ),
    Benchmark(
        "fusion-selection",
        "fusion_selection.py",
        "--out {out}",
        "--replicates 2 --queries 60 --blends 6 --gains 0,0.03",
    ),
    Benchmark(
        "frontier",
        "frontier.py",
        "--out {out}",
        "--dataset {dataset} --model {model} --dtype float32 --taus 1,2 --latency-queries 5 "
        "--storages float32,float16,int8,binary,binary+rescore,rabitq1,rabitq2+rescore",
    ),
    Benchmark(
        "lean-store",
        "lean_store.py",
        "--out {out}",
        "--dataset {dataset} --model {model} --dtype float32",
    ),
    Benchmark(
        "serve-load",
        "serve_load.py",
        "--limit 100 --before cabe5ae --out {out}",
        "--dataset {dataset} --model {model} --dtype float32 --clients 1,4 --requests 20",
    ),
    Benchmark(
        "frontier-scale",
        "frontier_scale.py",
        "--out {out}",
        "--dataset {dataset} --model {model} --dtype float32 --sizes 2000 "
        "--filters embedfilter-nomean:2 --latency-queries 5",
    ),
    Benchmark(
        "rabitq-rescore",
        "frontier_scale.py",
        "--sizes 1000000 --index-types IVF1024 --storages int8,rabitq1+rescore,rabitq2+rescore "
        "--rescore 16,64,128 --nprobes 64,128,256 --out {out}",
        "--dataset {dataset} --model {model} --dtype float32 --sizes 2000 --nprobes 4 "
        "--index-types IVF16 --latency-queries 5",
    ),
    Benchmark(
        "rabitq-fastscan",
        "rabitq_fastscan.py",
        "--out {out}",
        "--dataset {dataset} --model {model} --dtype float32 --size 3000 --nlist 16 "
        "--nprobes 4 --bits 1,2 --latency-queries 5",
    ),
    Benchmark(
        "reference-gap",
        "reference_gap.py",
        "--out {out}",
        "--dataset {dataset} --model {model} --sub-collection 60",
    ),
)


class InputError(Exception):
    """A quick input could not be made."""


class Inputs:
    """What commands run on: SciFact, the results root, and under --quick the small inputs,
    each made on first use."""

    def __init__(self, scifact: Path, out: Path, *, quick: bool) -> None:
        self.scifact, self.out, self.quick = scifact, out, quick

    def values(self, name: str) -> Placeholders:
        """The placeholder values of benchmark ``name``'s command."""
        dataset = {} if self.quick else {"dataset": shown_path(self.scifact)}
        known = {"out": shown_path(self.out / name), "scifact": shown_path(self.scifact)}
        return Placeholders(self, {**known, **dataset})

    def quick_value(self, key: str) -> str:
        made = {"dataset": "slice", "model": "model", "index": "index"}
        if not self.quick or key not in made:
            raise KeyError(f"{{{key}}} has no value outside --quick")
        return str(getattr(self, made[key]))

    @cached_property
    def slice(self) -> Path:
        return write_slice(self.scifact, self.out / "inputs" / "scifact-slice")

    @cached_property
    def model(self) -> Path:
        return save_tiny_model(self.out / "inputs" / "tiny-model")

    @cached_property
    def index(self) -> Path:
        folder = self.out / "inputs" / "tiny-index"
        argv = ["-q", "index", str(self.slice), "--out", str(folder), "--model", str(self.model)]
        flags = ["--dtype", "float32", "--sparse", "--sparse-doc-tokens", "64", "--bm25"]
        built = subprocess.run([cli_executable(), *argv, *flags], env=self.environment())
        if built.returncode != 0:
            raise InputError("`retriever index` of the tiny index failed (its messages are above)")
        return folder

    def environment(self) -> dict[str, str]:
        """The benchmarks' environment: $SCIFACT, and under --quick an embedding and model
        cache of its own, so that tiny encodings stay out of the user's cache."""
        extra = {"SCIFACT": str(self.scifact)}
        if self.quick:
            extra["RETRIEVER_CACHE"] = str(self.out / "inputs" / "cache")
        return {**os.environ, **extra}


class Placeholders(dict):
    """A command's placeholder values; a quick input is made when a command first names it."""

    def __init__(self, inputs: Inputs, known: dict[str, str]) -> None:
        super().__init__(known)
        self.inputs = inputs

    def __missing__(self, key: str) -> str:
        self[key] = self.inputs.quick_value(key)
        return self[key]


def shown_path(path: Path) -> str:
    """A path as a command shows it: relative to the repository root when under its parent.

    Made absolute without resolving links: a shared/ linked in beside the checkout is
    still shown as ../shared."""
    path = Path(os.path.abspath(path))
    if path.is_relative_to(ROOT.parent):
        return os.path.relpath(path, ROOT)
    return str(path)


def cli_executable() -> str:
    """The `retriever` command installed beside this Python, else the one on PATH."""
    beside = Path(sys.executable).parent / CLI
    found = str(beside) if beside.exists() else shutil.which(CLI)
    if found is None:
        raise SystemExit("no `retriever` command: install the package (bash scripts/setup.sh)")
    return found


def run(benchmark: Benchmark, inputs: Inputs) -> tuple[int, float]:
    """Run one benchmark from the repository root: (exit status, seconds)."""
    values = inputs.values(benchmark.name)
    try:
        argv = benchmark.argv(values, quick=inputs.quick)
    except InputError as error:
        print(f"\n== {benchmark.name}: not run: {error}", flush=True)
        return 1, 0.0
    if benchmark.program == CLI:
        program = [cli_executable()]
    else:
        program = [sys.executable, f"benchmarks/{benchmark.program}"]
    print(f"\n== {benchmark.name}: {benchmark.shown(values, quick=inputs.quick)}", flush=True)
    started = time.perf_counter()
    status = subprocess.run([*program, *argv], cwd=ROOT, env=inputs.environment()).returncode
    return status, time.perf_counter() - started


def selected(names: list[str]) -> list[Benchmark]:
    """The named benchmarks, in the order given; none named: every CPU benchmark."""
    if not names:
        return [b for b in BENCHMARKS if not b.gpu]
    known = {b.name: b for b in BENCHMARKS}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise SystemExit(
            f"unknown benchmark {', '.join(unknown)}; --list shows them: {', '.join(known)}"
        )
    return [known[name] for name in names]


def print_list(inputs: Inputs) -> None:
    for benchmark in BENCHMARKS:
        folder = RESULTS / benchmark.name
        notes = ["GPU, run by name"] if benchmark.gpu else []
        if not folder.is_dir():
            notes.append("not published yet")
        suffix = f" ({'; '.join(notes)})" if notes else ""
        command = benchmark.shown(inputs.values(benchmark.name))
        print(f"{benchmark.name}{suffix}\n    {command}\n    -> {shown_path(folder)}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help="benchmarks to run (default: every one that needs no GPU)",
    )
    parser.add_argument("--list", action="store_true", help="print each benchmark and exit")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a tiny model and a SciFact slice, into a temporary folder or --out",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="ROOT",
        help="write NAME/ under ROOT (default: benchmarks/results, or a new temporary "
        "folder with --quick)",
    )
    parser.add_argument(
        "--dataset",
        type=dataset_path,
        default=SCIFACT,
        help="the SciFact BEIR folder (default: $SCIFACT or ../shared/datasets/scifact)",
    )
    args = parser.parse_args()
    if args.list:
        print_list(Inputs(args.dataset, RESULTS, quick=False))
        return
    benchmarks = selected(args.names)
    out = args.out or (Path(tempfile.mkdtemp(prefix="benchmarks-")) if args.quick else RESULTS)
    inputs = Inputs(args.dataset, out.resolve(), quick=args.quick)
    outcomes = [(benchmark, *run(benchmark, inputs)) for benchmark in benchmarks]
    print(f"\nResults under {out}:")
    for benchmark, status, seconds in outcomes:
        state = "ok" if status == 0 else f"FAILED (exit {status})"
        print(f"  {benchmark.name:<28} {seconds:8.1f} s  {state}")
    if any(status for _, status, _ in outcomes):
        sys.exit(1)


if __name__ == "__main__":
    main()
