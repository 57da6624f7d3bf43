#!/usr/bin/env bash
# The SciFact and scaling benchmarks on a GPU machine: bfloat16 encoding on CUDA and GPU
# FAISS (--gpu refuses to fall back to the CPU, so a CPU number is never published as a GPU
# one). Set up first with `bash scripts/setup.sh` (it picks faiss-gpu when nvidia-smi lists
# a GPU). Runs the scifact-smollm2-gpu and scifact-smollm2-scaling-gpu entries of
# benchmarks/run_all.py (`run_all.py --list` prints their commands) into
# benchmarks/results/scifact-smollm2-gpu/ and ...-scaling-gpu/, whose results.md/scaling.md
# record the command and where every row ran. $SCIFACT names the dataset folder; extra
# arguments go to run_all.py.
set -euo pipefail
cd "$(dirname "$0")/.."

nvidia-smi -L
.venv/bin/python -c "import torch, faiss; assert torch.cuda.is_available(), 'torch sees no GPU'; assert faiss.get_num_gpus() > 0, 'faiss sees no GPU'"
exec .venv/bin/python benchmarks/run_all.py scifact-smollm2-gpu scifact-smollm2-scaling-gpu "$@"
