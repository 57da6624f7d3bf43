#!/usr/bin/env bash
# The full SciFact benchmark with the embedded default model, as published in
# benchmarks/results/: the scifact-smollm2 and scifact-smollm2-scaling entries of
# benchmarks/run_all.py, which holds their commands (`run_all.py --list` prints them).
# bfloat16 weights (what --dtype auto gives on this project's CPU). The first run encodes
# the corpus once per prompt (about 6 minutes for PromptEOL, longer for Echo, on 2 CPU
# cores; mean and last pooling share one pass), through the same embedding store
# `retriever index` uses, so a built index's encoding is reused; the scaling run reuses the
# first one's PromptEOL encoding. Run it on a quiet machine: the latencies are measured in
# the same run. $SCIFACT names the dataset folder (default: ../shared/datasets/scifact);
# extra arguments go to run_all.py (e.g. --quick for a smoke run on a tiny model).
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python benchmarks/run_all.py scifact-smollm2 scifact-smollm2-scaling "$@"
