"""Encoding on Ray Data: the same shards as one process, and a killed worker loses nothing."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from retriever import EncoderConfig
from retriever.data.datasets import scan_corpus
from retriever.encode.encoder import Encoder
from retriever.store.encoding import encode_corpus
from retriever.store.on_ray import KILL_AFTER_SHARD_ENV, RayOptions
from tests.conftest import synthetic_docs, write_jsonl

ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'retriever[ray]'")


@pytest.fixture(scope="module")
def fault_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where a test arms the workers' kill-after-shard hook (see retriever.store.on_ray)."""
    return tmp_path_factory.mktemp("ray-faults")


@pytest.fixture(scope="module")
def local_ray(fault_folder: Path):
    """One local Ray for the module (it takes seconds to start)."""
    ray.init(
        num_cpus=2,
        logging_level="ERROR",
        include_dashboard=False,
        runtime_env={"env_vars": {KILL_AFTER_SHARD_ENV: str(fault_folder)}},
    )
    yield ray
    ray.shutdown()


def _stores(model: str, corpus: Path, tmp_path: Path, chunk: int, **ray_options):
    encoder = Encoder.load(model, EncoderConfig(max_length=64), dtype="float32")
    scan = scan_corpus(corpus)
    both = ("mean", "last")
    single = encode_corpus(
        encoder, scan, folder=tmp_path / "single", chunk_size=chunk, poolings=both
    )
    on_ray = encode_corpus(
        encoder,
        scan,
        folder=tmp_path / "ray",
        chunk_size=chunk,
        poolings=both,
        ray=RayOptions(**ray_options),
        show_progress=False,
    )
    return single, on_ray


def _assert_same(single, on_ray) -> None:
    assert not on_ray.missing_chunks()
    ids = [d.id for s in on_ray.shards() for d in s.documents()]
    assert ids == [d.id for s in single.shards() for d in s.documents()]
    assert len(ids) == len(set(ids)) == single.count  # nothing lost, nothing twice
    for pooling in ("mean", "last"):
        a, b = single.read(pooling), on_ray.read(pooling)
        cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        assert cosine.min() >= 0.9999


def test_ray_shards_match_the_single_process_path(
    local_ray, tiny_model: Path, tmp_path: Path
) -> None:
    corpus = write_jsonl(tmp_path / "docs.jsonl", synthetic_docs(40))
    _assert_same(*_stores(str(tiny_model), corpus, tmp_path, 8, workers=2))


def test_a_worker_killed_mid_run_loses_and_duplicates_nothing(
    local_ray, fault_folder: Path, tiny_model: Path, tmp_path: Path
) -> None:
    # The first worker to write a shard after this dies by SIGKILL, with chunks still to
    # do: Ray restarts it and retries its chunk, which must find its shard already there.
    corpus = write_jsonl(tmp_path / "docs.jsonl", synthetic_docs(400))
    (fault_folder / "armed").touch()
    try:
        single, on_ray = _stores(str(tiny_model), corpus, tmp_path, 50, workers=2)
    finally:
        (fault_folder / "armed").unlink()
    assert (fault_folder / "fired").exists(), "no Ray worker reached the kill hook"
    assert int((fault_folder / "fired").read_text()) != os.getpid()  # a worker, not us
    _assert_same(single, on_ray)


@pytest.mark.slow
def test_ray_with_the_default_model(local_ray, tmp_path: Path) -> None:
    from tests.conftest import USER_CACHE, require_scifact

    scifact = require_scifact()

    os.environ["RETRIEVER_CACHE"] = str(USER_CACHE)  # where the converted model lives
    corpus = tmp_path / "slice.jsonl"
    with (scifact / "corpus.jsonl").open() as source:
        corpus.write_text("".join(next(source) for _ in range(40)))
    _assert_same(*_stores("smollm2-135m", corpus, tmp_path, 10, workers=2))
