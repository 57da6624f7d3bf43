"""benchmarks/: one entry point knows every benchmark and the command behind every published
result, and every benchmark writes its report through one helper. Fast: nothing here runs a
benchmark (`python benchmarks/run_all.py --quick` does, as a smoke run)."""

from __future__ import annotations

import ast
import importlib
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from retriever.evaluation.machine import folder_machine_record, machine_line

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
RESULTS = BENCHMARKS / "results"
# What a published command may start with, besides the arguments the entry holds.
PROGRAMS = re.compile(r"^(?:\.venv/bin/)?(?:python (?=benchmarks/)|(?=retriever ))")


@pytest.fixture(scope="module")
def run_all() -> Iterator[ModuleType]:
    sys.path.insert(0, str(BENCHMARKS))  # the scripts import their neighbours by name
    before = set(sys.modules)
    try:
        yield importlib.import_module("run_all")
    finally:
        sys.path.remove(str(BENCHMARKS))
        # The scripts' own modules (report, inputs, ...), not to shadow others'. Libraries
        # they imported stay: a second import of a C extension such as FAISS crashes.
        for name in set(sys.modules) - before:
            if Path(getattr(sys.modules[name], "__file__", None) or "/").parent == BENCHMARKS:
                sys.modules.pop(name)


@pytest.fixture(scope="module")
def published_values(run_all: ModuleType) -> dict[str, dict[str, str]]:
    """Each entry's placeholders as the published commands wrote them."""
    inputs = run_all.Inputs(ROOT.parent / "shared" / "datasets" / "scifact", RESULTS, quick=False)
    return {b.name: inputs.values(b.name) for b in run_all.BENCHMARKS}


def test_every_script_of_benchmarks_is_a_listed_benchmark_or_a_support_module(
    run_all: ModuleType,
) -> None:
    scripts = {b.program for b in run_all.BENCHMARKS if b.program != run_all.CLI}
    found = {path.name for path in BENCHMARKS.glob("*.py")}
    unlisted = found - scripts - run_all.SUPPORT_MODULES
    assert not unlisted, f"add these to run_all.BENCHMARKS (or SUPPORT_MODULES): {unlisted}"
    assert scripts | run_all.SUPPORT_MODULES <= found, "an entry names a script that is gone"


def test_every_published_results_folder_has_an_entry(run_all: ModuleType) -> None:
    names = {b.name for b in run_all.BENCHMARKS}
    folders = {path.name for path in RESULTS.iterdir() if path.is_dir()}
    assert folders <= names, f"no entry regenerates {sorted(folders - names)}"
    assert len(names) == len(run_all.BENCHMARKS), "two entries share a name"


def recorded_command(folder: Path) -> str:
    """The command a results folder says produced it: a JSON "command" (top level or under
    "meta"), else the first line of its Markdown that is a command."""
    for path in sorted(folder.glob("*.json")):
        record = json.loads(path.read_text())
        if isinstance(record, dict):
            command = record.get("command") or record.get("meta", {}).get("command")
            if command:
                return command
    for path in sorted(folder.glob("*.md")):
        for line in path.read_text().splitlines():
            line = line.strip().strip("`")
            if PROGRAMS.match(line):
                return line
    raise AssertionError(f"{folder} records no command")


def test_each_entry_holds_the_command_its_published_results_record(
    run_all: ModuleType, published_values: dict[str, dict[str, str]]
) -> None:
    for benchmark in run_all.BENCHMARKS:
        folder = RESULTS / benchmark.name
        if folder.is_dir():
            recorded = PROGRAMS.sub("", recorded_command(folder))
            shown = PROGRAMS.sub("", benchmark.shown(published_values[benchmark.name]))
            assert shown == recorded, benchmark.name


def test_every_published_retriever_command_still_parses() -> None:
    """A results folder records the command that made it: the command line of today must
    still read it (a renamed spelling included), or the folder must be regenerated."""
    from retriever.cli import parse_arguments

    parsed = 0
    for folder in sorted(path for path in RESULTS.iterdir() if path.is_dir()):
        command = recorded_command(folder)
        if command.startswith("retriever "):
            args = parse_arguments(shlex.split(command)[1:])
            assert callable(args.run), folder.name
            parsed += 1
    assert parsed >= 3


def test_every_command_fills_its_placeholders_and_writes_into_its_folder(
    run_all: ModuleType,
) -> None:
    values = {"dataset": "D", "scifact": "S", "out": "OUT", "model": "M", "index": "I"}
    for benchmark in run_all.BENCHMARKS:
        for quick in (False, True):
            argv = benchmark.argv(values, quick=quick)
            assert argv[argv.index("--out") + 1] == "OUT", benchmark.name


def run_all_cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(BENCHMARKS / "run_all.py"), *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_list_prints_every_benchmark_with_its_command_and_folder(run_all: ModuleType) -> None:
    # Any dataset folder that exists does (--dataset checks that): the shipped corpus.
    dataset = ROOT / "examples" / "quickstart"
    listed = run_all_cli("--list", "--dataset", str(dataset))
    assert listed.returncode == 0, listed.stderr
    inputs = run_all.Inputs(dataset, RESULTS, quick=False)
    for benchmark in run_all.BENCHMARKS:
        assert f"\n    {benchmark.shown(inputs.values(benchmark.name))}\n" in listed.stdout
        assert f"-> benchmarks/results/{benchmark.name}\n" in listed.stdout


def test_an_unknown_name_is_refused_in_one_line() -> None:
    refused = run_all_cli("no-such-benchmark")
    assert refused.returncode != 0
    assert refused.stderr.strip().count("\n") == 0
    assert "unknown benchmark no-such-benchmark" in refused.stderr


def test_the_report_helper_writes_json_markdown_and_the_command(
    run_all: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    report = importlib.import_module("report")  # beside run_all, on its path
    monkeypatch.setattr(sys, "argv", [str(BENCHMARKS / "demo.py"), "--out", str(tmp_path)])
    table = report.markdown_table(["n", "ms"], [["1", "0.5"]])
    report.write_report(tmp_path, "demo", {"rows": [{"n": 1, "ms": 0.5}]}, table, title="Demo")
    command = f"python benchmarks/demo.py --out {tmp_path}"
    record = json.loads((tmp_path / "demo.json").read_text())
    machine = record.pop("machine")
    assert record == {"command": command, "rows": [{"n": 1, "ms": 0.5}]}
    assert machine["cores"] == os.cpu_count() and machine["weights"] is None
    assert set(machine["versions"]) == {"torch", "faiss", "transformers", "onnxruntime"}
    assert (tmp_path / "demo.md").read_text().splitlines() == [
        "# Demo",
        "",
        machine_line(machine),
        "",
        f"`{command}`",
        "",
        "| n | ms |",
        "|---|---|",
        "| 1 | 0.5 |",
    ]


def test_benchmark_scripts_write_their_results_through_the_report_helper(
    run_all: ModuleType,
) -> None:
    for benchmark in run_all.BENCHMARKS:
        if benchmark.program != run_all.CLI:
            source = (BENCHMARKS / benchmark.program).read_text()
            assert "write_report(" in source, benchmark.program
            assert not re.search(r'\.(json|md)"\)\.write_text\(', source), benchmark.program


def private_names(source: str) -> list[str]:
    """`_names` a script reaches: attributes and names imported from retriever."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and re.match(r"_(?!_)", node.attr):
            found.append(node.attr)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("retriever"):
            found += [alias.name for alias in node.names if alias.name.startswith("_")]
    return found


def test_before_after_scripts_call_public_names_only(run_all: ModuleType) -> None:
    """A script that runs two revisions must keep running as the code moves."""
    for benchmark in run_all.BENCHMARKS:
        if benchmark.program == run_all.CLI:
            continue
        source = (BENCHMARKS / benchmark.program).read_text()
        if "code_trees(" in source:
            assert private_names(source) == [], benchmark.program


# What one results folder may keep in the repository: each rerun of a benchmark adds what
# changed in it to .git, forever.
RESULTS_FOLDER_LIMIT = 2 * 2**20


def repository_files(folder: Path) -> list[Path]:
    """The files of ``folder`` that git keeps or would add (ignored ones left out)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z", str(folder)],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return [ROOT / name for name in listed.split("\0") if name and (ROOT / name).is_file()]


def test_results_folders_stay_small_and_run_files_stay_out_of_git() -> None:
    assert "benchmarks/results/*/runs/" in (ROOT / ".gitignore").read_text().splitlines()
    for folder in sorted(p for p in RESULTS.iterdir() if p.is_dir()):
        files = repository_files(folder)
        assert not [f for f in files if "runs" in f.relative_to(folder).parts], folder.name
        size = sum(f.stat().st_size for f in files)
        assert size <= RESULTS_FOLDER_LIMIT, f"{folder.name} keeps {size / 2**20:.1f} MiB"


def test_every_results_folder_names_its_machine() -> None:
    for folder in sorted(p for p in RESULTS.iterdir() if p.is_dir()):
        machine = folder_machine_record(folder)
        assert machine is not None, f"{folder.name} has no machine record"
        assert {"cpu", "cpu_flags", "cores", "memory_gib", "versions", "dtype"} <= set(machine), (
            folder.name
        )


def test_the_rabitq_goal_holds_rabitq_to_int8s_fastest_row_at_the_recall(
    run_all: ModuleType,
) -> None:
    scale = importlib.import_module("frontier_scale")  # beside run_all, on its path

    def row(storage: str, recall: float, ram: int, qps: float) -> dict[str, Any]:
        return {
            **{"size": 1_000_000, "filter": "embedfilter-nomean", "tau": 2.0},
            **{"index_type": "IVF1024", "storage": storage, "params": {"nprobe": 64}},
            **{"recall_at_10_vs_exact": recall, "ram_bytes": ram, "batch_qps": qps},
        }

    rows = [
        row("int8", 0.96, 300, 700),
        row("int8", 0.90, 300, 2000),  # faster, but short of the recall
        row("rabitq2+rescore", 0.95, 90, 400),
        row("rabitq4", 0.99, 160, 900),  # more than a third of int8's RAM
    ]
    judged = scale.rabitq_goal(rows)["embedfilter-nomean tau 2"]
    assert judged["verdict"] == "met" and "rabitq2+rescore" in judged["rabitq"]
    assert judged["qps_share"] == pytest.approx(400 / 700)

    # The same row, its recall interval spanning the goal: not met yet.
    rows[2] |= {"recall_at_10_vs_exact": 0.96, "recall_at_10_low": 0.94, "recall_at_10_high": 0.98}
    judged = scale.rabitq_goal(rows)["embedfilter-nomean tau 2"]
    assert judged["verdict"] == "within noise" and "0.960 [0.940, 0.980]" in judged["rabitq"]
    rows[2] |= {"recall_at_10_high": 0.949}
    assert scale.rabitq_goal(rows)["embedfilter-nomean tau 2"]["verdict"] == "missed"

    rows[2]["batch_qps"] = 300  # under half of int8's 700 QPS
    assert scale.rabitq_goal(rows)["embedfilter-nomean tau 2"]["verdict"] == "missed"


def test_the_query_overhead_worker_finds_the_fusion_depth_where_its_own_searcher_lives(
    run_all: ModuleType,
) -> None:
    from retriever import Searcher
    from retriever.search.searcher import FUSION_DEPTH

    overhead = importlib.import_module("query_overhead")  # beside run_all, on its path
    assert overhead.fusion_depth(Searcher) == FUSION_DEPTH
    source = (BENCHMARKS / "query_overhead.py").read_text()
    assert "from retriever.search" not in source, "a path the before revision may not have"


class CountingEncoder:
    def __init__(self) -> None:
        self.texts: list[str] = []

    def encode_queries(self, texts: list[str]) -> None:
        self.texts.extend(texts)


def test_serve_loads_batching_ceiling_goes_round_a_small_query_set_again(
    run_all: ModuleType,
) -> None:
    serve_load = importlib.import_module("serve_load")  # beside run_all, on its path
    encoder = CountingEncoder()
    gain = serve_load.forward_gain(encoder, ["a", "b", "c"], size=2, rounds=3)
    assert gain["queries"] == 12 and len(gain["round_gains"]) == 3
    assert encoder.texts[2:] == (
        ["a", "b", "c", "a"] * 2 + ["b", "c", "a", "b"] * 2 + ["c", "a", "b", "c"] * 2
    )
    with pytest.raises(SystemExit, match="no judged test queries"):
        serve_load.forward_gain(encoder, [], size=2, rounds=1)


def test_query_overhead_counts_the_queries_both_versions_answered_alike(
    run_all: ModuleType,
) -> None:
    overhead = importlib.import_module("query_overhead")  # beside run_all, on its path
    before = [[["a", 0.9], ["b", 0.8]], [["c", 0.5], ["d", 0.4]]]
    after = [[["a", 0.9001], ["b", 0.8]], [["d", 0.41], ["c", 0.40]]]  # a near-tie swapped
    found = overhead.compare(before, after)
    assert found["same_ids_queries"] == 1 and found["queries"] == 2
    assert found["max_score_difference"] == pytest.approx(1e-4)
    assert overhead.compare(before[1:], after[1:])["max_score_difference"] is None


def test_search_loop_builds_each_side_the_parts_its_methods_search(run_all: ModuleType) -> None:
    import argparse

    loop = importlib.import_module("search_loop")  # beside run_all, on its path
    args = argparse.Namespace(dataset=Path("scifact"), methods="dense,bm25", model=None)
    argv = loop.index_argv(args, Path("out"))
    assert argv[:5] == ["-q", "index", "scifact", "--out", "out"]
    assert "--bm25" in argv and "--sparse" not in argv and "--model" not in argv
    args.methods, args.model = "dense+sparse", "tiny"
    argv = loop.index_argv(args, Path("out"))
    assert "--sparse" in argv and "--bm25" not in argv and argv[-2:] == ["--model", "tiny"]
    before, after = (argparse.Namespace(side=side) for side in ("before", "after"))
    assert loop.side_cache(before, Path("s")) == {"RETRIEVER_CACHE": str(Path("s/cache-before"))}
    assert loop.side_cache(after, Path("s")) == {}


def test_search_loop_pairs_each_rounds_after_with_its_before(run_all: ModuleType) -> None:
    loop = importlib.import_module("search_loop")  # beside run_all, on its path
    times = {
        "before": {"dense": [[10.0, 12.0, 11.0], [20.0, 22.0, 21.0]]},
        "after": {"dense": [[5.0, 6.0, 7.0], [18.0, 19.0, 17.0]]},  # round 2 ran slower
    }
    row = loop.method_row("dense", times)
    assert row["before_round_ms_p50"] == [11.0, 21.0]
    assert row["after_round_ms_p50"] == [6.0, 18.0]
    assert row["round_ratios"] == pytest.approx([6 / 11, 18 / 21])
    assert row["before_ms_p50"] == 16.0 and row["after_ms_p50"] == 12.0  # all six times
