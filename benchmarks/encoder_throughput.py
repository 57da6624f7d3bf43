"""Encoder throughput on SciFact: this checkout, git revision --before, sentence-transformers.

Encodes the first --docs SciFact documents (title + " " + text) with the default model
(SmolLM2-135M), the default prompt and pooling (PromptEOL, mean), max length 256 and
batch size 16, in one dtype for every variant (``auto`` resolves as ``retriever index``
resolves it on this CPU). Each variant runs in a process of its own: the Encoder of
--after (default: this working tree), the Encoder of git revision --before, both through
the public `retriever.Encoder` only, and sentence-transformers set up as a user would to
match (the model folder as a plain-text Transformer without its chat template, the prompt
around each document, mean pooling over every token, the same max length and batch size).
Each is warmed up with one untimed pass; then the variants take turns, one timed pass
each, --repeats times (median reported). Vectors are compared by cosine with a float32
encoding by the after code.

    python benchmarks/encoder_throughput.py --out benchmarks/results/encoder-throughput
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from inputs import SCIFACT, dataset_path
from report import machine_record, markdown_table, write_report
from revisions import Code, add_revision_options, check_imported, child_env, code_trees, worker_job

# HEAD before the encoder's hot paths were reworked (tracker issue "the hot paths made lean").
BEFORE = "f8fac9443006afb935be3fbea5c7c15f356a3535"
MAX_LENGTH = 256
ST_POOLING = {"mean": "mean", "last": "lasttoken"}
Prepared = tuple[Callable[[], Any], list[list[int]], list[bool]]

# --- inside a variant's process -----------------------------------------------------------


def fed_token_ids(encoder: Any, texts: list[str]) -> list[list[int]]:
    """The token ids the Encoder feeds the model per document, from its public parts: the
    tokenizer's special prefix, then the prompt around the text's ids as ``text_token_ids``
    cuts them (PromptEOL holds one copy of the text)."""
    from retriever.core.config import PROMPTS

    tokenizer, config = encoder.tokenizer, encoder.config
    before, after = PROMPTS[config.prompt].split("{text}")
    prefix = list(tokenizer("", add_special_tokens=True)["input_ids"])
    head, tail = tokenizer([config.document_instruction + before, after], add_special_tokens=False)[
        "input_ids"
    ]
    return [[*prefix, *head, *body, *tail] for body in encoder.text_token_ids(texts)]


def ours(job: dict) -> Prepared:
    """The project's Encoder of whichever code is first on the path: (encode, the token ids
    it feeds the model, whether it cut each document)."""
    from retriever import Encoder, EncoderConfig

    config = EncoderConfig(
        prompt=job["prompt"], pooling=job["pooling"], max_length=job["max_length"]
    )
    encoder = Encoder.load(
        job["model"], config, dtype=job["dtype"], device="cpu", batch_size=job["batch_size"]
    )
    texts = job["texts"]
    whole = encoder.tokenizer(texts, add_special_tokens=False)["input_ids"]
    kept = encoder.text_token_ids(texts)
    truncated = [len(w) > len(k) for w, k in zip(whole, kept, strict=True)]
    encode = lambda: encoder.encode_documents(texts, show_progress=False)  # noqa: E731
    return encode, fed_token_ids(encoder, texts), truncated


def sentence_transformers(job: dict) -> Prepared:
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    transformer = Transformer(
        job["model_path"],
        max_seq_length=job["max_length"],
        model_kwargs={"dtype": getattr(torch, job["dtype"])},
        # Plain text: by default sentence-transformers 6 wraps a decoder's input in its
        # chat template (a system prompt and turn markers) and pools the last token.
        modality_config={"text": {"method": "forward", "method_output_name": "last_hidden_state"}},
        module_output_name="token_embeddings",
    )
    pooling = Pooling(transformer.get_embedding_dimension(), pooling_mode=job["st_pooling"])
    model = SentenceTransformer(modules=[transformer, pooling], device="cpu")
    prompted = [job["template"].replace("{text}", t) for t in job["texts"]]
    # The token ids the model reads, as ST's own preprocessing cuts them.
    ids = model.tokenizer(prompted, truncation=True, max_length=job["max_length"])["input_ids"]
    truncated = [len(i) > job["max_length"] for i in model.tokenizer(prompted)["input_ids"]]
    batch_size = job["batch_size"]

    def encode() -> Any:
        return model.encode(
            prompted, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False
        )

    return encode, ids, truncated


def serve(job_path: Path) -> None:
    """One variant, driven over stdin: load and warm up, then time one pass per ``run``
    line; at ``stop`` write its vectors and a report."""
    import numpy as np
    import torch

    import retriever

    # Replies go out on the original stdout; anything a library prints goes to stderr.
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    job = json.loads(job_path.read_text())
    prepare = sentence_transformers if job["variant"] == "sentence-transformers" else ours
    encode, ids, truncated = prepare(job)
    vectors = encode() if job["warmup"] else None
    replies.write("ready\n")
    for line in sys.stdin:
        if line.strip() == "stop":
            break
        started = time.perf_counter()
        vectors = encode()
        replies.write(f"{time.perf_counter() - started}\n")
    np.save(job["vectors"], np.asarray(vectors, dtype=np.float32))
    report = {
        "ids": [list(i) for i in ids],
        "truncated": truncated,
        "torch_threads": torch.get_num_threads(),
        "retriever_code": str(Path(retriever.__file__).resolve().parents[1]),
    }
    Path(job["report"]).write_text(json.dumps(report))


# --- the driver ---------------------------------------------------------------------------


class Variant:
    """A worker process of one variant, started and warmed up, waiting for ``run``."""

    def __init__(self, name: str, code: Code, job: dict, scratch: Path) -> None:
        self.name, self.code, self.seconds = name, code, []
        self.vectors_path, self.report_path = scratch / f"{name}.npy", scratch / f"{name}.json"
        job = {**job, "variant": name}
        job["vectors"], job["report"] = str(self.vectors_path), str(self.report_path)
        job_path = scratch / f"{name}.job.json"
        job_path.write_text(json.dumps(job))
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker", str(job_path)],
            cwd=scratch,  # outside the repository: nothing shadows the code under test
            env=child_env(code),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.reply()  # "ready": loaded and warmed up

    def reply(self) -> str:
        line = self.process.stdout.readline()
        if not line:
            raise SystemExit(f"the {self.name} worker died (its messages are above)")
        return line.strip()

    def run(self) -> None:
        self.process.stdin.write("run\n")
        self.process.stdin.flush()
        self.seconds.append(float(self.reply()))
        print(f"{self.name}: {self.seconds[-1]:.2f} s", flush=True)

    def stop(self) -> tuple[dict, Any]:
        """(report, vectors of the last pass), once the worker has exited."""
        import numpy as np

        self.process.stdin.write("stop\n")
        self.process.stdin.close()
        if self.process.wait() != 0:
            raise SystemExit(f"the {self.name} worker failed (its messages are above)")
        report = json.loads(self.report_path.read_text())
        check_imported(report["retriever_code"], self.code)
        return {**report, "seconds": self.seconds}, np.load(self.vectors_path)


def make_job(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """What every variant encodes, and how; and the weights they run
    (:func:`retriever.encode.weights.weights_origin`)."""
    import torch

    from retriever.core.config import PROMPTS
    from retriever.core.spec import EncoderConfig
    from retriever.data.datasets import load_corpus
    from retriever.encode.encoder import encoder_dtype
    from retriever.encode.models import resolve_model
    from retriever.encode.weights import weights_origin

    config = EncoderConfig(max_length=MAX_LENGTH)
    if config.prompt == "echo":
        raise SystemExit("sentence-transformers cannot pool over the second copy of echo")
    resolved = resolve_model(args.model)  # converted and hashed once, outside the timings
    job = {
        "texts": [d.embedding_text for d in load_corpus(args.dataset, limit=args.docs).documents],
        "model": args.model,
        "model_revision": resolved.revision,
        "dtype": str(encoder_dtype(args.dtype, torch.device("cpu"))).removeprefix("torch."),
        "batch_size": args.batch_size,
        "max_length": config.max_length,
        "prompt": config.prompt,
        "pooling": config.pooling,
        "template": config.document_instruction + PROMPTS[config.prompt],
        "st_pooling": ST_POOLING[config.pooling],
        "model_path": str(resolved.path),
        "warmup": True,
    }
    return job, weights_origin(resolved)


def time_variants(job: dict, codes: list[Code], repeats: int, scratch: Path) -> tuple[dict, dict]:
    """Every variant's report and vectors, plus a float32 ``reference`` encoding."""
    after = codes[1]
    names = (("after", after), ("before", codes[0]), ("sentence-transformers", after))
    # Loaded and warmed up one after the other, then timed in turns, so that load from
    # elsewhere on the machine falls on every variant alike.
    variants = [Variant(name, code, job, scratch) for name, code in names]
    for _ in range(repeats):
        for variant in variants:
            variant.run()
    reports, vectors = {}, {}
    for variant in variants:
        reports[variant.name], vectors[variant.name] = variant.stop()
    if job["dtype"] == "float32":
        vectors["reference"] = vectors["after"]
    else:
        fp32 = Variant("reference", after, {**job, "dtype": "float32", "warmup": False}, scratch)
        fp32.run()
        vectors["reference"] = fp32.stop()[1]
    return reports, vectors


def cosines(a: Any, b: Any) -> Any:
    import numpy as np

    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def variant_row(report: dict, vectors: Any, reference: Any, cut: Any, documents: int) -> dict:
    """Throughput and cosines of one variant; ``cut``: the documents ST truncates."""
    median = statistics.median(report["seconds"])
    tokens = sum(len(i) for i in report["ids"])
    cos = cosines(vectors, reference)
    return {
        "tokens": tokens,
        "truncated_documents": sum(report["truncated"]),
        "seconds": [round(s, 3) for s in report["seconds"]],
        "median_seconds": round(median, 3),
        "tokens_per_second": round(tokens / median, 1),
        "documents_per_second": round(documents / median, 2),
        "cosine_to_fp32_reference": {
            "mean": float(cos.mean()),
            "min": float(cos.min()),
            "min_uncut_by_st": float(cos[~cut].min()) if (~cut).any() else None,
            "min_cut_by_st": float(cos[cut].min()) if cut.any() else None,
        },
        "torch_threads": report["torch_threads"],
    }


def ratios(rows: dict) -> dict[str, float]:
    after, before, st = rows["after"], rows["before"], rows["sentence-transformers"]
    return {
        "after_over_st_tokens_per_second": after["tokens_per_second"] / st["tokens_per_second"],
        "after_over_st_documents_per_second": after["documents_per_second"]
        / st["documents_per_second"],
        "after_over_before_documents_per_second": after["documents_per_second"]
        / before["documents_per_second"],
    }


def versions() -> dict[str, str]:
    import sentence_transformers
    import torch
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "sentence-transformers": sentence_transformers.__version__,
    }


def measure(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """The results, and the machine record (the variants' dtype and weights)."""
    import numpy as np

    job, weights = make_job(args)
    with tempfile.TemporaryDirectory(prefix="encoder-throughput-") as scratch:
        codes = code_trees(args.before, args.after, Path(scratch))
        reports, vectors = time_variants(job, codes, args.repeats, Path(scratch))
    # Documents that sentence-transformers feeds the model as exactly our token ids, and
    # those it cuts (losing the prompt's end, where ours keeps the text's head and tail
    # inside the whole prompt).
    pairs = zip(reports["after"]["ids"], reports["sentence-transformers"]["ids"], strict=True)
    same = sum(a == b for a, b in pairs)
    cut = np.array(reports["sentence-transformers"]["truncated"])
    rows = {
        name: variant_row(report, vectors[name], vectors["reference"], cut, len(job["texts"]))
        for name, report in reports.items()
    }
    meta = {
        **{key: job[key] for key in ("dtype", "batch_size", "max_length", "prompt", "pooling")},
        "documents": len(job["texts"]),
        "st_same_input_documents": same,
        "st_cut_documents": int(cut.sum()),
        "repeats": args.repeats,
        "model": f"{args.model} ({job['model_revision']})",
        "before": codes[0].label,
        "after": codes[1].label,
        "versions": versions(),
    }
    results = {"meta": meta, "variants": rows, "ratios": ratios(rows)}
    return results, machine_record(dtype=job["dtype"], weights=weights)


def cosine(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.6f}"


def variant_table(rows: dict) -> list[str]:
    header = [
        "variant", "tokens/s", "documents/s", "median s", "tokens", "truncated docs",
        "cosine mean", "cosine min", "min, uncut by ST", "min, cut by ST",
    ]  # fmt: skip
    cells = []
    for name, r in rows.items():
        cos = r["cosine_to_fp32_reference"]
        cells.append(
            [
                name,
                f"{r['tokens_per_second']:,.0f}",
                f"{r['documents_per_second']:.2f}",
                f"{r['median_seconds']:.2f}",
                f"{r['tokens']:,}",
                str(r["truncated_documents"]),
                cosine(cos["mean"]),
                cosine(cos["min"]),
                cosine(cos["min_uncut_by_st"]),
                cosine(cos["min_cut_by_st"]),
            ]
        )
    return markdown_table(header, cells)


def report_body(args: argparse.Namespace, results: dict) -> list[str]:
    meta, ratio = results["meta"], results["ratios"]
    return [
        f"The first {meta['documents']} SciFact documents, {args.model} in {meta['dtype']} "
        f"(what `--dtype {args.dtype}` gives on this CPU), {meta['prompt']} prompt, "
        f"{meta['pooling']} pooling, max length {meta['max_length']}, batch size "
        f"{meta['batch_size']}; before = {meta['before']}, after = {meta['after']}; "
        f"one warm-up pass, median of {meta['repeats']}. Tokens are the "
        "real (non-pad) tokens each variant feeds the model. Cosine is against a float32 "
        "encoding by the after code.",
        "",
        *variant_table(results["variants"]),
        "",
        f"Ours / sentence-transformers: {ratio['after_over_st_tokens_per_second']:.2f}x "
        f"tokens/s, {ratio['after_over_st_documents_per_second']:.2f}x documents/s. "
        f"After / before: {ratio['after_over_before_documents_per_second']:.2f}x documents/s.",
        "",
        "sentence-transformers pools the same way (the mean over every token, prompt "
        "included) but reads the whole prompted string: it tokenises it in one piece, where "
        "ours tokenises the prompt and the text apart, and it cuts a long input's tail, the "
        "prompt's end with it, where ours keeps the text's head and tail inside the whole "
        f"prompt. It fed the model exactly our token ids for {meta['st_same_input_documents']} "
        f"of {meta['documents']} documents and cut {meta['st_cut_documents']}. On SciFact "
        "with PromptEOL the seam that differs is a text's final period: `.\"` is one token "
        "when the prompted string is tokenised whole, two when the text is tokenised alone.",
    ]


def main() -> None:
    job = worker_job()
    if job is not None:
        serve(job)
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_revision_options(parser, before=BEFORE)
    parser.add_argument(
        "--dataset", type=dataset_path, default=SCIFACT, help="BEIR folder or JSONL"
    )
    parser.add_argument("--docs", type=int, default=256, help="first N documents")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per variant")
    parser.add_argument(
        "--model", default="smollm2-135m", help="model alias or folder (default: %(default)s)"
    )
    parser.add_argument("--batch-size", type=int, default=16, help="texts per forward pass")
    parser.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16")
    parser.add_argument(
        "--out", default="benchmarks/results/encoder-throughput", help="results folder"
    )
    args = parser.parse_args()
    if args.repeats < 1 or args.docs < 1:
        parser.error("--docs and --repeats must be at least 1")
    results, machine = measure(args)
    write_report(
        args.out,
        "encoder_throughput",
        results,
        report_body(args, results),
        title="Encoder throughput on SciFact documents",
        machine=machine,
    )


if __name__ == "__main__":
    main()
