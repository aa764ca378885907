#!/usr/bin/env bash
# Create .venv and install recurrl with everything it needs.
# torch is installed first and pinned: an unpinned torch with none installed pulls a multi-GB CUDA
# build. Override with TORCH_SPEC (e.g. TORCH_SPEC="torch==2.13.0 --index-url ..." on a GPU box).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
# dev: pytest, ruff, ONNX export, and popgym (the PyPI env package the tests train on via --env-package)
EXTRAS=${EXTRAS:-dev}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# shellcheck disable=SC2086
.venv/bin/python -m pip install -q $TORCH_SPEC
.venv/bin/python -m pip install -q -e ".[${EXTRAS}]"
echo "recurrl installed in .venv (activate with: source .venv/bin/activate)"
