"""What makes a published figure checkable: the machine record every result carries, the
weights it names (file and quantization), and the bootstrap interval a quality verdict
is read from."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from retriever.encode.models import ResolvedModel, resolve_model
from retriever.encode.weights import gguf_file_type, gguf_quantization, weights_origin
from retriever.evaluation.bench.run import add_ratios
from retriever.evaluation.intervals import (
    MET,
    MISSED,
    WITHIN_NOISE,
    RatioInterval,
    paired_ratio_interval,
)
from retriever.evaluation.machine import machine_line, machine_record, same_machine
from retriever.evaluation.metrics import PER_QUERY
from tests.conftest import write_gguf


def test_a_gguf_header_names_its_quantization(tmp_path: Path) -> None:
    assert gguf_file_type(write_gguf(tmp_path / "q.gguf", file_type=3)) == 3
    assert gguf_quantization(tmp_path / "q.gguf") == "Q4_1"
    assert gguf_quantization(write_gguf(tmp_path / "f.gguf", file_type=1)) == "F16"
    assert gguf_quantization(write_gguf(tmp_path / "none.gguf", file_type=None)) == "not declared"
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file")
    assert gguf_quantization(tmp_path / "junk.gguf").startswith("unreadable")


def test_weights_origin_of_a_folder_says_what_its_config_declares(tiny_model: Path) -> None:
    origin = weights_origin(resolve_model(str(tiny_model)))
    assert origin["format"] == "transformers folder"
    assert origin["file"].endswith(".safetensors")
    assert origin["quantization"].startswith("none")
    config = json.loads((tiny_model / "config.json").read_text())
    quantized = tiny_model.parent / "quantized"
    quantized.mkdir(exist_ok=True)
    for item in tiny_model.iterdir():
        (quantized / item.name).write_bytes(item.read_bytes())
    config["quantization_config"] = {"quant_method": "bitsandbytes"}
    (quantized / "config.json").write_text(json.dumps(config))
    assert weights_origin(resolve_model(str(quantized)))["quantization"] == "bitsandbytes"


def test_weights_origin_of_a_converted_gguf_names_the_file(tmp_path: Path) -> None:
    source = write_gguf(tmp_path / "model.Q4_1.gguf", file_type=3)
    folder = tmp_path / "converted"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"")
    resolved = ResolvedModel("model", folder, None, "0" * 64, source=source)
    origin = weights_origin(resolved)
    assert (origin["file"], origin["quantization"]) == ("model.Q4_1.gguf", "Q4_1")
    assert origin["format"].startswith("GGUF")


def test_the_machine_record_and_its_line() -> None:
    weights = {"file": "m.Q4_1.gguf", "quantization": "Q4_1", "format": "GGUF"}
    record = machine_record(dtype="float32", weights=weights)
    assert record["cores"] >= 1 and record["memory_gib"] > 0
    assert set(record["cpu_flags"]) == {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx"}
    line = machine_line(record)
    assert line.startswith(f"Machine: {record['cpu']} (") and "run in float32" in line
    assert "weights m.Q4_1.gguf (quantization Q4_1; GGUF)" in line
    assert "\n" not in line and f"torch {record['versions']['torch']}" in line


def test_records_of_one_machine_agree_whatever_ran_on_it() -> None:
    record = machine_record(dtype="float32")
    other_run = {**machine_record(dtype="bfloat16"), "versions": {"torch": "0"}}
    assert same_machine(record, other_run)
    flags = {**record["cpu_flags"], "avx512_bf16": not record["cpu_flags"]["avx512_bf16"]}
    assert not same_machine(record, {**record, "cpu_flags": flags})
    assert not same_machine(record, {**record, "cores": record["cores"] + 2})


def test_identical_runs_have_a_point_interval_at_one() -> None:
    scores = np.random.default_rng(1).random(300)
    interval = paired_ratio_interval(scores, scores)
    assert (interval.ratio, interval.low, interval.high) == (1.0, 1.0, 1.0)


def test_the_interval_is_paired_and_reproducible() -> None:
    rng = np.random.default_rng(2)
    base = rng.random(300) * 0.4
    # Queries vary a lot, the difference little: pairing keeps the interval narrow.
    better = base * 1.05
    paired = paired_ratio_interval(better, base)
    assert paired.low == pytest.approx(1.05) and paired.high == pytest.approx(1.05)
    noisy = np.clip(base + rng.normal(0, 0.15, 300), 0, 1)
    first, second = paired_ratio_interval(noisy, base), paired_ratio_interval(noisy, base)
    assert first == second
    assert first.low < first.ratio < first.high
    assert paired_ratio_interval(noisy, base, seed=7) != first


def test_verdicts_read_the_whole_interval() -> None:
    assert RatioInterval(1.0, 0.995, 1.01).verdict(0.99) == MET
    assert RatioInterval(0.95, 0.93, 0.97).verdict(0.99) == MISSED
    assert RatioInterval(0.99, 0.97, 1.01).verdict(0.99) == WITHIN_NOISE
    assert RatioInterval(1.2, 1.1, 1.3).exceeds(RatioInterval(1.0, 0.9, 1.09))
    assert not RatioInterval(1.2, 1.1, 1.3).exceeds(RatioInterval(1.0, 0.9, 1.11))


def test_fewer_queries_give_a_wider_interval() -> None:
    rng = np.random.default_rng(3)
    base = rng.random(1000) * 0.3
    ours = np.clip(base + rng.normal(0.01, 0.1, 1000), 0, 1)
    wide = paired_ratio_interval(ours[:50], base[:50])
    narrow = paired_ratio_interval(ours, base)
    assert wide.high - wide.low > narrow.high - narrow.low


def test_ratios_refuse_mismatched_or_empty_inputs() -> None:
    with pytest.raises(ValueError, match="same queries"):
        paired_ratio_interval([0.1, 0.2], [0.1])
    with pytest.raises(ValueError, match="mean is 0"):
        paired_ratio_interval([0.1, 0.2], [0.0, 0.0])


def test_bench_ratios_carry_the_interval_of_their_own_baseline() -> None:
    rng = np.random.default_rng(4)
    base = rng.random(300) * 0.2
    row = {"family": "dense", "search_ms_p50": 1.0, "index_bytes": 10, "source": None}
    rows = [
        {
            **row,
            "method": "unfiltered",
            "index_type": "Flat",
            "ndcg_at_10": base.mean(),
            PER_QUERY: list(base),
        },
        {
            **row,
            "method": "embedfilter",
            "index_type": "Flat",
            "ndcg_at_10": 2 * base.mean(),
            PER_QUERY: list(2 * base),
        },
        {
            **row,
            "method": "unfiltered",
            "index_type": "HNSW16",
            "ndcg_at_10": 0.0,
            PER_QUERY: [0.0] * 300,
        },
    ]
    add_ratios(rows, "Flat")
    assert (rows[0]["ndcg_ratio_low"], rows[0]["ndcg_ratio_high"]) == (1.0, 1.0)
    assert rows[1]["ndcg_ratio_low"] == pytest.approx(2.0)
    assert rows[2]["ndcg_ratio"] is None and rows[2]["ndcg_ratio_low"] is None
