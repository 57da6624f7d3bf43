"""`-q` anywhere on the command line silences info lines and every progress bar; without
it, bars show; transformers' weight-loading bar never does."""

from __future__ import annotations

from pathlib import Path

import pytest

from retriever.cli import main
from tests.conftest import synthetic_docs, write_jsonl


def test_quiet_before_or_after_the_command_hides_every_bar(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    corpus = write_jsonl(tmp_path / "docs.jsonl", synthetic_docs(40))
    index = tmp_path / "index"
    build = ["index", str(corpus), "--out", str(index), "--model", str(tiny_model)]
    assert main([*build, "--sparse", "--bm25", "--store", str(tmp_path / "store"), "-q"]) == 0
    err = capsys.readouterr().err
    assert err == "", err

    assert main(["search", str(index), "bone disease", "-q", "--explain"]) == 0
    assert main(["-q", "lens", str(index), "bone disease"]) == 0
    assert main(["eval", str(index), str(corpus), "-q"]) in (0, 2)  # no qrels beside a JSONL
    assert capsys.readouterr().err.count("%|") == 0

    rebuilt = tmp_path / "again"
    assert main(["index", str(corpus), "--out", str(rebuilt), "--model", str(tiny_model)]) == 0
    err = capsys.readouterr().err
    assert "encoding" in err and "%|" in err  # (info lines go to pytest's log capture here)
    assert "Loading weights" not in err


def test_the_encoding_bar_moves_per_batch_not_per_chunk(tiny_model: Path, tmp_path: Path) -> None:
    from retriever import Encoder
    from retriever.data.datasets import scan_corpus
    from retriever.store.encoding import encode_corpus

    encoder = Encoder.load(str(tiny_model), batch_size=4)
    seen: list[int] = []
    original = encoder.encode_poolings

    def spy(*args: object, **kwargs: object) -> object:
        on_batch = kwargs["on_batch"]
        kwargs["on_batch"] = lambda n: (seen.append(n), on_batch(n))
        return original(*args, **kwargs)

    encoder.encode_poolings = spy
    corpus = write_jsonl(tmp_path / "docs.jsonl", synthetic_docs(20))
    encode_corpus(encoder, scan_corpus(corpus), folder=tmp_path / "store", chunk_size=10)
    assert seen == [4, 4, 2] * 2  # per batch of 4 within each chunk of 10
