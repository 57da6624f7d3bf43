"""The command line's shape: help that fits the terminal, one spelling per idea (old ones
still parsed, not shown), and bench --scaling refusing what it would ignore."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

from retriever.cli import _build_parser, main
from retriever.cli.lists import split_index_types
from retriever.core.spec import IndexSpec, ModelSpec
from retriever.index.options import BuildOptions
from tests.conftest import QUICKSTART, SCIFACT, require_scifact

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = [
    "index",
    "encode",
    "add",
    "delete",
    "search",
    "lens",
    "eval",
    "bench",
    "scaling",
    "info",
    "check",
    "stores",
    "datasets",
    "export",
    "serve",
]
# What a measurement looks like in prose: 0.310, 27 ms, 1.5x, 12%, x faster, the 3rd digit.
MEASURED = r"\d\.\d{2,}|\b\d+(?:\.\d+)? ?(?:ms|s|x|%)(?!\w)|\bx faster|\d(?:st|nd|rd|th) digit"


def _help(capsys: pytest.CaptureFixture, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", [[], *([c] for c in COMMANDS)])
def test_help_fits_the_terminal_width(
    command: list[str], capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    text = _help(capsys, *command)
    too_wide = [line for line in text.splitlines() if len(line) > 100]
    assert too_wide == []


def test_help_wraps_descriptions_but_keeps_examples(
    capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "60")
    text = _help(capsys, "index")
    description = text.split("\n\n")[1:3]  # after the usage block: two paragraphs
    assert description[0].startswith("Encode documents with an LLM")
    for paragraph in description:
        assert 1 < len(paragraph.splitlines()) and max(map(len, paragraph.splitlines())) <= 60
    lines = text.splitlines()
    # Examples are commands to copy: one per line, as written.
    assert "  retriever index --from store --out indexes/scifact --index-type IVF256,Flat" in lines
    # Flags are never broken at one of their hyphens.
    assert not [line for line in lines if line.rstrip().endswith("-")]


def test_help_answers_without_loading_torch_or_faiss() -> None:
    program = (
        "import sys; from retriever.cli import _build_parser; _build_parser().format_help(); "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'faiss'}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"


def test_help_quotes_no_measured_number(
    capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # a figure must not hide behind a line break
    for command in COMMANDS:
        text = _help(capsys, command)
        measured = re.findall(MEASURED, text)
        assert measured == [], (command, measured)


@pytest.mark.parametrize(
    ("written", "types_"),
    [
        ("Flat,IVF64,Flat,HNSW32,milvus:Flat", ["Flat", "IVF64,Flat", "HNSW32", "milvus:Flat"]),
        ("OPQ16_64,IVF256,PQ16,RFlat,Flat", ["OPQ16_64,IVF256,PQ16,RFlat", "Flat"]),
        ("IVF64,Flat,Refine(OPQ8,PQ8),PCA32,Flat", ["IVF64,Flat,Refine(OPQ8,PQ8)", "PCA32,Flat"]),
        ("milvus:IVF64,Flat,Flat", ["milvus:IVF64,Flat", "Flat"]),
        ("Flat,PQ16,HNSW32_SQ8", ["Flat", "PQ16", "HNSW32_SQ8"]),
        (" Flat, ,IMI2x8,PQ8 ", ["Flat", "IMI2x8,PQ8"]),
    ],
)
def test_index_types_are_a_comma_list_that_keeps_factory_commas(
    written: str, types_: list[str]
) -> None:
    assert split_index_types(written) == types_


def test_index_types_old_space_separated_form_still_parses(capsys) -> None:
    parser = _build_parser()
    comma = parser.parse_args(["bench", "D", "--index-types", "Flat,IVF64,Flat,milvus:Flat"])
    spaces = parser.parse_args(["bench", "D", "--index-types", "Flat", "IVF64,Flat", "milvus:Flat"])
    assert comma.index_types == spaces.index_types == ["Flat", "IVF64,Flat", "milvus:Flat"]
    assert parser.parse_args(["bench", "D"]).index_types == ["Flat"]
    text = _help(capsys, "bench")
    assert "--index-types TYPES " in text and "TYPES ..." not in text


def test_bench_mean_direction_speaks_like_index(capsys) -> None:
    parser = _build_parser()
    assert parser.parse_args(["bench", "D"]).remove_mean_direction is True
    for flag in ("--no-remove-mean-direction", "--no-mean-direction"):
        assert parser.parse_args(["bench", "D", flag]).remove_mean_direction is False
    text = _help(capsys, "bench")
    assert "--no-remove-mean-direction" in text and "--no-mean-direction" not in text
    assert "--remove-mean-direction" in _help(capsys, "index")


def test_eval_json_is_a_switch_and_the_old_file_form_still_parses(capsys) -> None:
    parser = _build_parser()
    base = ["eval", "IDX", "DATA"]
    switch = parser.parse_args([*base, "--json", "--runs", "R"])
    assert (switch.json, switch.json_out, switch.runs) == (True, None, "R")
    old = parser.parse_args([*base, "--json", "report.json"])
    assert (old.json, old.json_out) == (False, "report.json")
    new = parser.parse_args([*base, "--json-out", "report.json"])
    assert (new.json, new.json_out) == (False, "report.json")
    text = _help(capsys, "eval")
    assert "[--json]" in text and "--json-out FILE" in text and "--json JSON" not in text


def test_eval_json_prints_and_json_out_writes(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from retriever import build_index

    require_scifact()
    index = build_index(
        SCIFACT,
        tmp_path / "idx",
        IndexSpec(model=ModelSpec(name=str(tiny_model), dtype="float32")),
        BuildOptions(limit=20),
    )
    report = tmp_path / "report.json"
    argv = ["-q", "eval", str(index), str(SCIFACT), "--methods", "dense"]
    assert main([*argv, "--json", "--json-out", str(report)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(report.read_text())
    assert [row["method"] for row in printed["rows"]] == ["dense"]
    assert main([*argv, "--json-out", str(tmp_path / "no-such-folder" / "r.json")]) == 2
    assert "its folder does not exist" in capsys.readouterr().err


@pytest.fixture
def fake_bench(monkeypatch: pytest.MonkeyPatch) -> dict:
    """retriever.evaluation.bench replaced by a recorder: what the CLI asks for, without a model."""
    calls: dict = {}
    fake = types.ModuleType("retriever.evaluation.bench")
    fake.BenchSettings = lambda **settings: settings
    fake.BenchModel = lambda **model: model
    fake.ScalingSettings = lambda **scaling: scaling
    fake.run_bench = lambda *args, **kwargs: calls.setdefault("run_bench", (args, kwargs))
    fake.run_scaling_bench = lambda *args, **kwargs: calls.setdefault("scaling", (args, kwargs))
    monkeypatch.setitem(sys.modules, "retriever.evaluation.bench", fake)
    return calls


def _refused(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("command", [["scaling"], ["bench", "--scaling"]])
def test_scaling_takes_no_variant_table_flag(
    command: list[str], fake_bench: dict, capsys: pytest.CaptureFixture
) -> None:
    """`retriever scaling` has a parser of its own, so a flag of the variant table is an
    unknown argument, not a flag to police; `bench --scaling` is read as `scaling`."""
    argv = [command[0], str(QUICKSTART), *command[1:]]
    err = _refused(capsys, [*argv, "--bands", "edge", "-k", "5", "--no-sparse"])
    assert "unrecognized arguments: --bands edge -k 5 --no-sparse" in err
    assert "invalid choice: 'mean,last'" in _refused(capsys, [*argv, "--pooling", "mean,last"])
    assert "unrecognized arguments: --sizes" in _refused(
        capsys, ["bench", str(QUICKSTART), "--sizes", "10,20"]
    )
    assert fake_bench == {}


def test_scaling_passes_on_what_it_uses(fake_bench: dict) -> None:
    argv = ["bench", str(QUICKSTART), "--scaling", "--sizes", "100,200", "--taus", "1,4"]
    argv += ["--limit", "50", "--split", "train", "--pooling", "last", "--out", "o"]
    assert main(argv) == 0
    (dataset, out, model, scaling), kwargs = fake_bench["scaling"]
    assert (dataset, out) == (str(QUICKSTART), "o")
    assert (scaling["sizes"], scaling["taus"], kwargs["limit"]) == ((100, 200), (1.0, 4.0), 50)
    assert (kwargs["split"], model["poolings"], model["prompts"]) == (
        "train",
        ("last",),
        ("prompteol",),
    )
    assert kwargs["command"] == "retriever " + " ".join(argv)


def test_bench_table_settings_from_the_new_spellings(fake_bench: dict) -> None:
    argv = ["bench", str(QUICKSTART), "--index-types", "Flat,IVF64,Flat", "--out", "o"]
    argv += ["--no-remove-mean-direction", "--no-bm25", "--pooling", "mean,last"]
    assert main(argv) == 0
    (_, _, model, settings), _ = fake_bench["run_bench"]
    assert settings["index_types"] == ("Flat", "IVF64,Flat")
    assert (settings["mean_direction"], settings["bm25"], settings["sparse"]) == (
        False,
        False,
        True,
    )
    assert model["poolings"] == ("mean", "last")
