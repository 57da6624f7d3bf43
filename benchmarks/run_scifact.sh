#!/usr/bin/env bash
# The full SciFact benchmark with the embedded default model, as published in
# benchmarks/results/. float32 weights, as in the reference probe. The first run encodes
# the corpus once per prompt (about 30 minutes each on 2 CPU cores; mean and last pooling
# share one pass); the embedding cache makes every rerun take minutes. Add echo to
# --prompt (prompteol,echo) for the Echo rows: one more corpus encoding.
# Run it on a quiet machine: the latencies are measured in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
dataset=${SCIFACT:-../shared/datasets/scifact}
retriever=.venv/bin/retriever

"$retriever" bench "$dataset" --prompt prompteol --pooling mean,last --dtype float32 \
    --out benchmarks/results/scifact-smollm2
"$retriever" bench "$dataset" --scaling --prompt prompteol --pooling mean --dtype float32 \
    --out benchmarks/results/scifact-smollm2-scaling
