"""The GPU path: what can be checked on a CPU (limits, fallbacks, resources, placement,
what benchmarks time, packaging), and ``gpu``-marked tests that run where a GPU is."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from retriever import RetrieverError, Searcher, build_index
from retriever.cli import main
from retriever.core.spec import DenseSpec, IndexSpec, ModelSpec, SearchParams
from retriever.evaluation.scaling import GPU_PQ_BYTES, GPU_PQ_SUB_DIMS, ivfpq_type
from retriever.parts.dense import faiss_install
from retriever.parts.dense import gpu as faiss_gpu
from retriever.parts.dense.backends import FaissBackend
from retriever.parts.dense.faiss_index import build_faiss_index
from retriever.parts.dense.faiss_install import faiss
from retriever.parts.dense.gpu import GPU_MAX_K, GpuOptions, Placed, place


def _unit(n: int, dim: int, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


class _FakeGpus:
    """Makes faiss-cpu look like faiss-gpu with ``count`` GPUs, recording what it is
    asked; the "GPU index" is the CPU index itself."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, count: int, fail: str | None = None):
        self.resources_made = 0
        self.clones: list[dict] = []
        monkeypatch.setattr(faiss_gpu, "gpu_count", lambda: count)
        monkeypatch.setattr(faiss_gpu, "_resources", {})

        def make_resources() -> object:
            self.resources_made += 1
            return object()

        def clone(resources, index, cloner, gpus):
            self.clones.append(
                {
                    "resources": resources,
                    "gpus": gpus,
                    "shard": cloner.shard,
                    "float16": cloner.useFloat16,
                }
            )
            if fail:
                raise RuntimeError(f"Error in faiss::gpu::ToGpuCloner: {fail}")
            return index

        monkeypatch.setattr(faiss, "StandardGpuResources", make_resources, raising=False)
        monkeypatch.setattr(faiss, "index_cpu_to_gpu_multiple_py", clone, raising=False)
        monkeypatch.setattr(faiss, "GpuMultipleClonerOptions", _ClonerOptions, raising=False)


class _ClonerOptions:
    shard = False
    useFloat16 = False


def test_k_and_nprobe_beyond_the_gpu_limit_are_refused_before_faiss(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    backend = FaissBackend(8, index=build_faiss_index(_unit(50, 8), "IVF4,Flat"))
    backend._placed = Placed(backend.index, True, "GPU 0 (one GPU)")  # as a GPU load leaves it

    def never(*args: object) -> None:
        raise AssertionError("FAISS was called")

    monkeypatch.setattr("retriever.parts.dense.backends.search_faiss_index", never)
    with pytest.raises(RetrieverError, match=f"at most {GPU_MAX_K} hits per query"):
        backend.search(_unit(1, 8), GPU_MAX_K + 1)
    backend.set_search_params({"nprobe": GPU_MAX_K + 1})
    with pytest.raises(RetrieverError, match=f"probes at most {GPU_MAX_K} lists"):
        backend.search(_unit(1, 8), 10)


def test_the_same_k_on_the_cpu_is_fine() -> None:
    backend = FaissBackend(8, index=build_faiss_index(_unit(50, 8), "Flat"), use_gpu=False)
    scores, keys = backend.search(_unit(1, 8), GPU_MAX_K + 1)
    assert (keys[0, :50] >= 0).all() and (keys[0, 50:] == -1).all()


def test_a_fallback_names_its_real_cause_every_time(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _FakeGpus(monkeypatch, 1, fail="shared memory 73728 exceeds the device limit 49152")
    caplog.set_level(logging.INFO, logger="retriever.parts.dense.gpu")
    index = build_faiss_index(_unit(300, 16), "Flat", use_gpu=False)
    first = place(index, None, "search")
    second = place(index, None, "search")
    assert not first.on_gpu and first.index is index
    assert "shared memory 73728 exceeds" in first.where
    assert "no GPU version" not in first.where
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and second.where == first.where
    with pytest.raises(RetrieverError, match="cannot run on the GPU: .*shared memory"):
        place(index, True, "search")


def test_one_gpu_resources_per_gpu_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _FakeGpus(monkeypatch, 2)
    index = build_faiss_index(_unit(40, 8), "Flat", use_gpu=False)
    for _ in range(3):
        assert place(index, None, "search").on_gpu
    assert fake.resources_made == 2
    assert all(clone["resources"] == fake.clones[0]["resources"] for clone in fake.clones)


def test_gpu_ids_placement_and_float16(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _FakeGpus(monkeypatch, 4)
    flat = build_faiss_index(_unit(40, 8), "Flat", use_gpu=False)
    placed = place(flat, GpuOptions(ids=(1, 3), placement="shard"), "search")
    assert fake.clones[-1] == {**fake.clones[-1], "gpus": [1, 3], "shard": True, "float16": False}
    assert placed.where == "GPU 1,3 (sharded)"
    place(flat, GpuOptions(ids=(2,), placement="shard"), "search")
    assert fake.clones[-1]["shard"] is False  # one GPU: nothing to shard
    place(flat, GpuOptions(float16=True), "search")
    assert fake.clones[-1]["float16"] is True and fake.clones[-1]["gpus"] == [0, 1, 2, 3]
    pq = build_faiss_index(_unit(2000, 16), "IVF8,PQ4", use_gpu=False)
    place(pq, None, "search")
    assert fake.clones[-1]["float16"] is True  # lookup tables: needed from M = 48 on
    with pytest.raises(RetrieverError, match=r"--gpu-ids \[7\] not visible: faiss sees 4"):
        place(flat, GpuOptions(ids=(0, 7)), "search")
    with pytest.raises(RetrieverError, match="choose replicate, shard"):
        GpuOptions(placement="mirror")


@pytest.fixture(scope="module")
def tiny_index(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.conftest import synthetic_docs, write_jsonl

    root = tmp_path_factory.mktemp("gpu")
    corpus = write_jsonl(root / "docs.jsonl", synthetic_docs(30))
    return build_index(
        corpus, root / "toy", IndexSpec(model=ModelSpec(name=str(tiny_model), dtype="float32"))
    )


def test_asking_for_a_gpu_without_one_is_one_line(
    tiny_index: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["search", str(tiny_index), "a query", "--gpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "a GPU index was asked for (--gpu), but faiss sees no GPU" in err[0]
    assert main(["search", str(tiny_index), "a query", "--gpu-ids", "zero"]) == 2
    assert "--gpu-ids takes GPU numbers" in capsys.readouterr().err


def test_the_scaling_benchmark_times_the_index_it_searches(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from retriever.evaluation import scaling as scaling
    from retriever.parts.dense import backends as backends
    from retriever.parts.dense.backends import build_in_memory

    searched: list[int] = []

    class Counting:
        def __init__(self, index: object) -> None:
            self.index = index
            self.ntotal = index.ntotal

        def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
            searched.append(len(queries))
            return self.index.search(queries, k)

    monkeypatch.setattr(
        backends,
        "place_for_search",
        lambda index, gpu: Placed(Counting(index), True, "GPU 0 (one GPU)"),
    )
    backend = build_in_memory(DenseSpec(index_type="Flat"), _unit(100, 8), tmp_path)
    row, _ = scaling._measure(backend, _unit(7, 8, seed=1), 5, 4, 1)
    assert row["ran_on"] == "GPU 0 (one GPU)"
    assert searched.count(1) == 4 + 1  # the timed single queries and the warm-up
    assert searched.count(7) >= 2  # the batched runs


def test_the_bench_records_where_its_dense_searches_ran(
    monkeypatch: pytest.MonkeyPatch, tiny_model: Path, tmp_path: Path
) -> None:
    from retriever.evaluation.metrics import evaluate_index
    from retriever.parts.dense import backends as backends
    from tests.conftest import synthetic_docs, write_jsonl

    corpus = write_jsonl(tmp_path / "docs.jsonl", synthetic_docs(30))
    index = build_index(
        corpus, tmp_path / "idx", IndexSpec(model=ModelSpec(name=str(tiny_model), dtype="float32"))
    )
    monkeypatch.setattr(
        backends,
        "place_for_search",
        lambda index, gpu: Placed(index, False, "CPU (faked: no GPU version)"),
    )
    searcher = Searcher.load(index)
    queries = {"q1": "quick brown fox", "q2": "protein folding"}
    rows, _ = evaluate_index(searcher, queries, {"q1": {"s1": 1}, "q2": {"s2": 1}}, warmup=0)
    assert rows[0]["ran_on"] == "CPU (faked: no GPU version)"


def test_scaling_pq_sizes_are_gpu_sizes() -> None:
    for dim in (576, 288, 144, 72, 64, 32):
        m = int(ivfpq_type(10**6, dim).split("PQ")[1])
        assert m in GPU_PQ_BYTES and dim % m == 0 and dim // m in GPU_PQ_SUB_DIMS
    assert ivfpq_type(10**6, 576) == "IVF1024,PQ48"


def test_two_faiss_builds_installed_are_refused_with_the_fix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(
        faiss_install, "_installed", lambda name: name in ("faiss-cpu", "faiss-gpu-cu12")
    )
    with pytest.raises(RetrieverError) as refused:
        faiss_install.check_faiss_install()
    message = str(refused.value)
    assert "faiss-cpu and faiss-gpu-cu12 are both installed" in message
    assert "pip uninstall -y faiss-cpu faiss-gpu-cu12" in message
    monkeypatch.setattr(faiss_install, "_installed", lambda name: name == "faiss-cpu")
    faiss_install.check_faiss_install()


# -- on a GPU ------------------------------------------------------------------------


@pytest.mark.gpu
def test_gpu_ivf_search_matches_the_cpu_with_its_nprobe(tiny_model: Path, tmp_path: Path) -> None:
    from tests.conftest import synthetic_docs, write_jsonl

    corpus = write_jsonl(tmp_path / "docs.jsonl", synthetic_docs(300))
    index = build_index(
        corpus,
        tmp_path / "ivf",
        IndexSpec(
            model=ModelSpec(name=str(tiny_model), dtype="float32"),
            dense=DenseSpec(index_type="IVF8,Flat"),
        ),
    )
    queries = [doc["text"] for doc in synthetic_docs(20, seed=3)]
    cpu = Searcher.load(index, search=SearchParams(nprobe=8), use_gpu=False).batch_search(
        queries, k=10
    )
    on_gpu = Searcher.load(index, search=SearchParams(nprobe=8), use_gpu=True)
    assert on_gpu.index.on_gpu
    gpu = on_gpu.batch_search(queries, k=10)
    overlap = np.mean([len(set(cpu[q].ids) & set(gpu[q].ids)) / 10 for q in cpu])
    assert overlap >= 0.99
    with pytest.raises(RetrieverError, match="at most 2048 hits"):
        on_gpu.search(queries[0], k=GPU_MAX_K + 1)


@pytest.mark.gpu
def test_gpu_ivfpq_with_48_byte_codes_runs_on_the_gpu() -> None:
    index = build_faiss_index(_unit(20_000, 576), "IVF64,PQ48", use_gpu=False)
    placed = place(index, True, "search")
    assert placed.on_gpu and "float16" in placed.where


def test_queries_are_encoded_in_the_dtype_the_index_was_built_with(
    tiny_model: Path, tmp_path: Path
) -> None:
    import torch

    from tests.conftest import synthetic_docs, write_jsonl

    corpus = write_jsonl(tmp_path / "docs.jsonl", synthetic_docs(12))
    index = build_index(
        corpus,
        tmp_path / "bf16",
        IndexSpec(model=ModelSpec(name=str(tiny_model), dtype="bfloat16")),
    )
    assert Searcher.load(index).encoder.dtype == torch.bfloat16
    assert Searcher.load(index, dtype="float32").encoder.dtype == torch.float32
