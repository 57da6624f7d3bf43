"""ONNX Runtime (CPUExecutionProvider) against torch float32 for the encoder, on SciFact.

Loads the project's Encoder in float32 (default model SmolLM2-135M, PromptEOL, mean
pooling, max length 256, batch size 16), exports its base transformer (input_ids and
attention_mask -> last_hidden_state) to ONNX with torch's TorchScript exporter, and runs
it in ONNX Runtime with every graph optimisation (ORT_ENABLE_ALL). Both runtimes read
exactly the same token ids: the Encoder's own prompted, truncated sequences, longest first,
in its batches and right padding; ORT's hidden states are pooled in numpy over the span the
Encoder pools. A torch pass is ``Encoder.encode_documents``; an ORT pass does the same
preparation, then the ONNX model and the pooling. Both runtimes use every core
(os.cpu_count()). One untimed pass each (which also checks the ids and the cosines), then
the runtimes take turns, one timed pass each, --repeats times (median reported).

    python benchmarks/cpu_runtime.py --out benchmarks/results/cpu-runtime

Needs ONNX Runtime and onnx: pip install 'retriever[onnx]'.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from inputs import SCIFACT, dataset_path
from report import cpu_description, machine, markdown_table, write_report

from retriever import Encoder, EncoderConfig
from retriever.datasets import load_texts
from retriever.models import DEFAULT_MODEL
from retriever.threads import numpy_blas_on_one_thread

MAX_LENGTH = 256
COSINE_BAR = 0.9999
SETTLE_SECONDS = 0.2
# Fixed (and recorded) so that a rerun exports the same graph; the TorchScript exporter
# covers every op of a Llama-style model at 17.
OPSET = 17
# The ISA extensions that decide which kernels torch (oneDNN/MKL) and ORT (MLAS) pick.
Batch = tuple[np.ndarray, np.ndarray]  # right-padded (B, T) ids, (B, 3) length/start/end


def require_onnx() -> None:
    """Stop in one line when the `onnx` extra is missing: torch's exporter needs `onnx`."""
    missing = []
    for module in ("onnxruntime", "onnx"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise SystemExit(f"{' and '.join(missing)} not installed: pip install 'retriever[onnx]'")


class LastHiddenState(torch.nn.Module):
    """The base transformer as the Encoder calls it, with one tensor out.

    ``use_cache=False``: otherwise the traced graph would also build a KV cache that nothing
    reads (the Encoder's own forward leaves the model's default on)."""

    def __init__(self, base: torch.nn.Module) -> None:
        super().__init__()
        self.base = base

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.base(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return out.last_hidden_state


def export_onnx(encoder: Encoder, example: list[int], folder: Path) -> tuple[Path, dict]:
    """The base transformer as ``folder/encoder.onnx``, with the exporter's warnings.

    The TorchScript exporter (``dynamo=False``): the default torch.export-based one needs
    the onnxscript package besides. It traces one example, so the example has a padded
    row: the attention mask's path is the one traced, whatever the batch holds later."""
    path = folder / "encoder.onnx"
    ids = torch.tensor([example[:8], example[:8]])
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    dynamic = {name: {0: "batch", 1: "sequence"} for name in ("input_ids", "attention_mask")}
    started = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.onnx.export(
            LastHiddenState(encoder.model.base_model).eval(),
            (ids, mask),
            str(path),
            dynamo=False,
            input_names=["input_ids", "attention_mask"],
            output_names=["last_hidden_state"],
            dynamic_axes={**dynamic, "last_hidden_state": {0: "batch", 1: "sequence"}},
            opset_version=OPSET,
        )
    seconds = time.perf_counter() - started
    # Distinct warnings, where they were raised: the tracer's "treated as a constant"
    # notes say which Python branches the graph fixed.
    seen = sorted(
        {
            f"{w.category.__name__} at {Path(w.filename).name}:{w.lineno}: "
            f"{str(w.message).splitlines()[0][:160]}"
            for w in caught
        }
    )
    size = sum(f.stat().st_size for f in folder.iterdir())
    info = {"seconds": round(seconds, 2), "opset": OPSET, "bytes": size, "warnings": seen}
    return path, info


def ort_session(path: Path, threads: int) -> tuple[Any, dict]:
    """An ORT CPU session with every graph optimisation, on ``threads`` intra-op threads
    (the calling thread counts as one, as torch's does)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    # One graph node at a time, like torch's eager forward: threads go to each kernel.
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    started = time.perf_counter()
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    info = {
        "graph_optimization_level": options.graph_optimization_level.name,
        "intra_op_num_threads": threads,
        "execution_mode": options.execution_mode.name,
        "providers": session.get_providers(),
        "session_seconds": round(time.perf_counter() - started, 2),
    }
    return session, info


def encoder_batches(encoder: Encoder, texts: list[str]) -> tuple[np.ndarray, list[Batch]]:
    """The order and padded batches ``Encoder.encode_documents`` feeds the model: its own
    preparation, longest first (stable), its batch size, its right padding."""
    prepared = encoder._prepare(texts, encoder.config.document_instruction)
    order = np.argsort([-len(p.ids) for p in prepared], kind="stable")
    size = encoder.batch_size
    batches = [
        encoder._batch_arrays([prepared[i] for i in order[start : start + size]])
        for start in range(0, len(order), size)
    ]
    return order, batches


def pool(hidden: np.ndarray, spans: np.ndarray, pooling: str) -> np.ndarray:
    """``(B, d)`` float32 pooled as Encoder._pool_batch pools: the mean over [start, end)
    with weights of 1/n, or the last real token."""
    lengths, start, end = spans[:, 0], spans[:, 1], spans[:, 2]
    positions = np.arange(hidden.shape[1])
    if pooling == "mean":
        inside = (positions >= start[:, None]) & (positions < end[:, None])
        weights = inside / (end - start)[:, None]
    else:
        weights = positions == lengths[:, None] - 1
    return np.matmul(weights.astype(np.float32)[:, None, :], hidden)[:, 0]


def ort_encode(encoder: Encoder, session: Any, texts: list[str]) -> tuple[np.ndarray, list]:
    """``(n, d)`` float32 in input order, and the batches fed, in feeding order."""
    order, batches = encoder_batches(encoder, texts)
    out = np.zeros((len(texts), encoder.hidden_size), dtype=np.float32)
    done = 0
    for ids, spans in batches:
        mask = (np.arange(ids.shape[1]) < spans[:, :1]).astype(np.int64)
        (hidden,) = session.run(None, {"input_ids": ids, "attention_mask": mask})
        out[order[done : done + len(ids)]] = pool(hidden, spans, encoder.config.pooling)
        done += len(ids)
    return out, batches


def torch_encode_capturing(encoder: Encoder, texts: list[str]) -> tuple[np.ndarray, list]:
    """A torch pass (``encode_documents``) that also records the id batches its model
    reads, to prove that ORT reads the same."""
    fed: list[np.ndarray] = []

    def record(module: Any, args: tuple, kwargs: dict) -> None:
        fed.append(kwargs["input_ids"].numpy().copy())

    hook = encoder.model.base_model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        vectors = encoder.encode_documents(texts, show_progress=False)
    finally:
        hook.remove()
    return vectors, fed


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def check_pass(encoder: Encoder, session: Any, texts: list[str]) -> dict[str, Any]:
    """The untimed warm-up pass of each runtime: same ids fed, and cosine per document."""
    reference, torch_fed = torch_encode_capturing(encoder, texts)
    vectors, ort_fed = ort_encode(encoder, session, texts)
    same = len(torch_fed) == len(ort_fed) and all(
        a.shape == ids.shape and np.array_equal(a, ids)
        for a, (ids, _) in zip(torch_fed, ort_fed, strict=False)
    )
    if not same:
        raise SystemExit("torch and ONNX Runtime were fed different token ids: a bug here")
    cos = cosines(reference, vectors)
    return {
        "same_token_ids": same,
        "batches": len(ort_fed),
        "tokens": int(sum(int(spans[:, 0].sum()) for _, spans in ort_fed)),
        "padded_tokens": int(sum(ids.size for ids, _ in ort_fed)),
        "cosine_min": float(cos.min()),
        "cosine_mean": float(cos.mean()),
        "cosine_bar": COSINE_BAR,
        "meets_bar": bool(cos.min() >= COSINE_BAR),
    }


def timed_turns(passes: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    """Seconds per pass, the runtimes taking turns, so that load from elsewhere on the
    machine falls on both alike."""
    seconds: dict[str, list[float]] = {name: [] for name in passes}
    for _ in range(repeats):
        for name, run in passes.items():
            # Worker threads (torch's OpenMP, ORT's pool) spin a while after their work:
            # a pause keeps one runtime's spinning off the start of the other's pass.
            time.sleep(SETTLE_SECONDS)
            started = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - started)
            print(f"{name}: {seconds[name][-1]:.2f} s", flush=True)
    return seconds


def runtime_row(seconds: list[float], documents: int, tokens: int) -> dict[str, Any]:
    """A runtime's timings; ``tokens``: the real (non-pad) tokens of a pass."""
    median = statistics.median(seconds)
    return {
        "seconds": [round(s, 3) for s in seconds],
        "median_seconds": round(median, 3),
        "documents_per_second": round(documents / median, 2),
        "tokens_per_second": round(tokens / median, 1),
    }


def versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnxruntime": onnxruntime.__version__,
        "onnx": onnx.__version__,
    }


def measure(args: argparse.Namespace) -> dict[str, Any]:
    threads = os.cpu_count() or 1
    # Both runtimes on every core: torch's default may count physical cores only.
    torch.set_num_threads(threads)
    config = EncoderConfig(max_length=MAX_LENGTH)
    encoder = Encoder.load(
        args.model, config, dtype="float32", device="cpu", batch_size=args.batch_size
    )
    texts = load_texts(args.dataset, limit=args.docs)
    # The folder lives as long as the session: ORT may map a large model's external data.
    # numpy's BLAS (ORT's pooling) runs on one thread: its spinning workers would take a
    # core from the runtime timed next.
    with tempfile.TemporaryDirectory(prefix="cpu-runtime-") as scratch, numpy_blas_on_one_thread():
        first = encoder._prepare(texts[:1], config.document_instruction)[0].ids
        path, export = export_onnx(encoder, first, Path(scratch))
        session, ort_info = ort_session(path, threads)
        check = check_pass(encoder, session, texts)
        passes = {
            "torch": lambda: encoder.encode_documents(texts, show_progress=False),
            "onnxruntime": lambda: ort_encode(encoder, session, texts),
        }
        seconds = timed_turns(passes, args.repeats)
    rows = {name: runtime_row(s, len(texts), check["tokens"]) for name, s in seconds.items()}
    ratio = rows["onnxruntime"]["documents_per_second"] / rows["torch"]["documents_per_second"]
    meta = {
        "model": f"{args.model} ({encoder.resolved.revision})",
        "dtype": "float32",
        "prompt": config.prompt,
        "pooling": config.pooling,
        "max_length": config.max_length,
        "batch_size": encoder.batch_size,
        "documents": len(texts),
        "repeats": args.repeats,
        "machine": machine(),
        "cpu": cpu_description(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "versions": versions(),
    }
    return {
        "meta": meta,
        "export": export,
        "onnxruntime": ort_info,
        "check": check,
        "runtimes": rows,
        "ort_over_torch_documents_per_second": round(ratio, 3),
        "ort_faster": ratio > 1,
    }


def report_body(args: argparse.Namespace, results: dict[str, Any]) -> list[str]:
    meta, check, ort, export = (results[k] for k in ("meta", "check", "onnxruntime", "export"))
    cpu = meta["cpu"]
    flags = ", ".join(f"{f} {'yes' if has else 'no'}" for f, has in cpu["flags"].items())
    model = "SmolLM2-135M" if args.model == DEFAULT_MODEL else args.model
    table = markdown_table(
        ["runtime", "documents/s", "tokens/s", "median s", "passes (s)"],
        (
            [
                name,
                f"{r['documents_per_second']:.2f}",
                f"{r['tokens_per_second']:,.0f}",
                f"{r['median_seconds']:.3f}",
                ", ".join(f"{s:.3f}" for s in r["seconds"]),
            ]
            for name, r in results["runtimes"].items()
        ),
    )
    ratio = results["ort_over_torch_documents_per_second"]
    verdict = "faster" if results["ort_faster"] else "not faster"
    bar = "meets" if check["meets_bar"] else "FAILS"
    return [
        f"The first {meta['documents']} SciFact documents, {model} in float32, "
        f"{meta['prompt']} prompt, {meta['pooling']} pooling, max length {meta['max_length']}, "
        f"batch size {meta['batch_size']}: {check['batches']} batches, {check['tokens']:,} "
        f"real tokens ({check['padded_tokens']:,} with padding). One warm-up pass each, "
        f"median of {meta['repeats']} alternating passes.",
        "",
        f"Machine: {meta['machine']}; {cpu['name']}; {flags}. torch "
        f"{meta['versions']['torch']} on {meta['torch_threads']} threads; ONNX Runtime "
        f"{meta['versions']['onnxruntime']} ({', '.join(ort['providers'])}), "
        f"{ort['graph_optimization_level']}, {ort['intra_op_num_threads']} intra-op threads, "
        f"{ort['execution_mode']}.",
        "",
        *table,
        "",
        f"ONNX Runtime / torch: {ratio:.2f}x documents/s: ONNX Runtime is {verdict}.",
        "",
        f"Same token ids fed to both: {'yes' if check['same_token_ids'] else 'no'}. Cosine "
        f"of ORT's pooled vector to torch float32's, per document: min {check['cosine_min']:.7f}, "
        f"mean {check['cosine_mean']:.7f} ({bar} the bar of {check['cosine_bar']}).",
        "",
        f"Export: torch.onnx.export (TorchScript exporter), opset {export['opset']}, "
        f"{export['bytes'] / 2**20:.1f} MiB, {export['seconds']:.1f} s; ORT session "
        f"{ort['session_seconds']:.1f} s. Exporter warnings: {len(export['warnings'])} "
        "distinct (in the JSON).",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dataset", type=dataset_path, default=SCIFACT, help="BEIR folder or JSONL"
    )
    parser.add_argument("--docs", type=int, default=64, help="first N documents")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per runtime")
    parser.add_argument(
        "--model", default=DEFAULT_MODEL, help="model alias or folder (default: %(default)s)"
    )
    parser.add_argument("--batch-size", type=int, default=16, help="texts per forward pass")
    parser.add_argument("--out", default="benchmarks/results/cpu-runtime", help="results folder")
    args = parser.parse_args()
    if args.repeats < 1 or args.docs < 1:
        parser.error("--docs and --repeats must be at least 1")
    require_onnx()
    results = measure(args)
    write_report(
        args.out,
        "cpu_runtime",
        results,
        report_body(args, results),
        title="ONNX Runtime against torch float32 on CPU",
    )


if __name__ == "__main__":
    main()
