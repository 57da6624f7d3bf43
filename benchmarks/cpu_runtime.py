"""ONNX Runtime (`--runtime onnx`) against torch float32 for the encoder, on SciFact.

Loads the project's Encoder twice in float32 (default model SmolLM2-135M, PromptEOL, mean
pooling, max length 256, batch size 16): as torch runs it, and with ``runtime="onnx"``,
which exports the base transformer once into the cache (retriever.encode.onnx_runtime) and runs
it in ONNX Runtime with every graph optimisation. Both go through
``Encoder.encode_documents``, so both read exactly the same token ids (the Encoder's own
prompted, truncated sequences, longest first, in its batches and right padding; checked
on the warm-up pass) and pool the same way. Both use every core (os.cpu_count()). One
untimed pass each (which also checks the ids and the cosines), then the runtimes take
turns, one timed pass each, --repeats times (median reported).

    python benchmarks/cpu_runtime.py --out benchmarks/results/cpu-runtime

Needs ONNX Runtime and onnx: pip install 'retriever[onnx]'.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from inputs import SCIFACT, dataset_path
from report import encoder_machine_record, markdown_table, write_report

from retriever import Encoder, EncoderConfig, RetrieverError
from retriever.core.cache import cache_dir
from retriever.core.spec import DEFAULT_MODEL
from retriever.data.datasets import load_texts
from retriever.encode.onnx_runtime import OPSET, require_onnx

MAX_LENGTH = 256
COSINE_BAR = 0.9999
SETTLE_SECONDS = 0.2


def encode_capturing(encoder: Encoder, texts: list[str]) -> tuple[np.ndarray, list]:
    """An ``encode_documents`` pass that also records the id batches the transformer
    reads (torch's model, or the ONNX Runtime forward), to prove both read the same."""
    fed: list[np.ndarray] = []
    if encoder.runtime == "torch":

        def record(module: Any, args: tuple, kwargs: dict) -> None:
            fed.append(kwargs["input_ids"].numpy().copy())

        hook = encoder.model.base_model.register_forward_pre_hook(record, with_kwargs=True)
        try:
            return encoder.encode_documents(texts, show_progress=False), fed
        finally:
            hook.remove()
    forward = encoder._forward
    encoder._forward = lambda ids, mask: (fed.append(ids.numpy().copy()), forward(ids, mask))[1]
    try:
        return encoder.encode_documents(texts, show_progress=False), fed
    finally:
        encoder._forward = forward


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def check_pass(encoders: dict[str, Encoder], texts: list[str]) -> dict[str, Any]:
    """The untimed warm-up pass of each runtime: same ids fed, and cosine per document."""
    reference, torch_fed = encode_capturing(encoders["torch"], texts)
    vectors, ort_fed = encode_capturing(encoders["onnxruntime"], texts)
    same = len(torch_fed) == len(ort_fed) and all(
        a.shape == b.shape and np.array_equal(a, b)
        for a, b in zip(torch_fed, ort_fed, strict=False)
    )
    if not same:
        raise SystemExit("torch and ONNX Runtime were fed different token ids: a bug here")
    pad = encoders["torch"]._pad_id
    cos = cosines(reference, vectors)
    return {
        "same_token_ids": same,
        "batches": len(ort_fed),
        "tokens": int(sum(int((ids != pad).sum()) for ids in ort_fed)),
        "padded_tokens": int(sum(ids.size for ids in ort_fed)),
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


def load_both(args: argparse.Namespace, config: EncoderConfig) -> tuple[dict, dict]:
    """The torch and ONNX Runtime encoders, and what loading the second cost (the export,
    the first time a model is seen)."""
    torch_encoder = Encoder.load(
        args.model, config, dtype="float32", device="cpu", batch_size=args.batch_size
    )
    cached = (
        cache_dir() / "onnx" / f"{torch_encoder.resolved.weights_sha256[:24]}-opset{OPSET}.onnx"
    )
    was_cached = cached.is_file()
    started = time.perf_counter()
    onnx_encoder = Encoder.load(args.model, config, batch_size=args.batch_size, runtime="onnx")
    export = {
        "opset": OPSET,
        "bytes": cached.stat().st_size,
        "load_seconds": round(time.perf_counter() - started, 2),
        "export_cached": was_cached,
    }
    return {"torch": torch_encoder, "onnxruntime": onnx_encoder}, export


def measure(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """The results, and the machine record of the torch encoder (both run in float32)."""
    threads = os.cpu_count() or 1
    # Both runtimes on every core: torch's default may count physical cores only.
    torch.set_num_threads(threads)
    config = EncoderConfig(max_length=MAX_LENGTH)
    encoders, export = load_both(args, config)
    texts = load_texts(args.dataset, limit=args.docs)
    check = check_pass(encoders, texts)
    passes = {
        name: (lambda e=e: e.encode_documents(texts, show_progress=False))
        for name, e in encoders.items()
    }
    seconds = timed_turns(passes, args.repeats)
    rows = {name: runtime_row(s, len(texts), check["tokens"]) for name, s in seconds.items()}
    ratio = rows["onnxruntime"]["documents_per_second"] / rows["torch"]["documents_per_second"]
    meta = {
        "model": f"{args.model} ({encoders['torch'].resolved.revision})",
        "dtype": "float32",
        "prompt": config.prompt,
        "pooling": config.pooling,
        "max_length": config.max_length,
        "batch_size": args.batch_size,
        "documents": len(texts),
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "versions": versions(),
    }
    results = {
        "meta": meta,
        "export": export,
        "onnxruntime": {
            "graph_optimization_level": "ORT_ENABLE_ALL",
            "execution_mode": "ORT_SEQUENTIAL",
        },
        "check": check,
        "runtimes": rows,
        "ort_over_torch_documents_per_second": round(ratio, 3),
        "ort_faster": ratio > 1,
    }
    return results, encoder_machine_record(encoders["torch"])


def report_body(args: argparse.Namespace, results: dict[str, Any]) -> list[str]:
    meta, check, ort, export = (results[k] for k in ("meta", "check", "onnxruntime", "export"))
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
        f"torch {meta['versions']['torch']} and ONNX Runtime {meta['versions']['onnxruntime']} "
        f"(CPUExecutionProvider, {ort['graph_optimization_level']}, "
        f"{ort['execution_mode']}), each on {meta['threads']} threads.",
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
        f"{export['bytes'] / 2**20:.1f} MiB; loading the ONNX encoder took "
        f"{export['load_seconds']:.1f} s "
        f"({'export cached' if export['export_cached'] else 'export included'}).",
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
    try:
        require_onnx()
    except RetrieverError as exc:
        raise SystemExit(str(exc)) from None
    results, machine = measure(args)
    write_report(
        args.out,
        "cpu_runtime",
        results,
        report_body(args, results),
        title="ONNX Runtime against torch float32 on CPU",
        machine=machine,
    )


if __name__ == "__main__":
    main()
