#!/usr/bin/env bash
# The SciFact and scaling benchmarks on a GPU machine: bfloat16 encoding on CUDA and GPU
# FAISS (--gpu refuses to fall back to the CPU, so a CPU number is never published as a GPU
# one). Set up first with `bash scripts/setup.sh` (it picks faiss-gpu when nvidia-smi lists
# a GPU). Writes benchmarks/results/scifact-smollm2-gpu/ and ...-scaling-gpu/, whose
# results.md/scaling.md record the command and where every row ran.
set -euo pipefail
cd "$(dirname "$0")/.."
dataset=${SCIFACT:-../shared/datasets/scifact}
retriever=.venv/bin/retriever

nvidia-smi -L
.venv/bin/python -c "import torch, faiss; assert torch.cuda.is_available(), 'torch sees no GPU'; assert faiss.get_num_gpus() > 0, 'faiss sees no GPU'"
"$retriever" bench "$dataset" --prompt prompteol --pooling mean,last --dtype bfloat16 \
    --device cuda --batch-size 64 --gpu --index-types Flat IVF256,Flat \
    --out benchmarks/results/scifact-smollm2-gpu
"$retriever" bench "$dataset" --scaling --prompt prompteol --pooling mean --dtype bfloat16 \
    --device cuda --batch-size 64 --gpu --sizes 10000,100000,1000000 \
    --out benchmarks/results/scifact-smollm2-scaling-gpu
