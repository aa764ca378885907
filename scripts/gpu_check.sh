#!/usr/bin/env bash
# bash scripts/gpu_check.sh OUT_DIR [--dry-run]
#
# Measures every GPU claim of recurrl on one GPU, unattended, in under 8 minutes, from a clean checkout;
# writes JSON + markdown into OUT_DIR (summary.md, summary.json, steps.jsonl, one log per step, the
# measurements) and prints the summary. Each step has a time limit, all of them together
# GPU_CHECK_BUDGET_S (default 450); a step that fails, times out or cannot run is recorded with the
# reason and the next one runs. Exit status 1 when a step failed or timed out.
#
#   setup      a Python whose torch sees the GPU: the checkout's .venv if so; else $PYTHON (default
#              python3) with recurrl linked onto PYTHONPATH and the missing dependencies pip-installed
#              into its environment (from the wheels in $WHEELS with no index, when set: for machines
#              without the internet); else scripts/setup.sh with TORCH_SPEC (default: torch 2.13.0's
#              CUDA 12.8 wheel; needs the internet)
#   mamba_ssm  pip install mamba-ssm in the background (a prebuilt wheel, or a build: often too slow,
#              then the mamba step is skipped, saying so)
#   triton     tests/test_triton_scan.py's GPU test: the fused scan kernels compiled for the device
#   bench      recurrl bench backbones --device cuda, T=1024,4096: the HBM-bandwidth, cuDNN and log-scan targets
#   dt_k20, dt_k200   recurrl bench decision train: minGRU, Transformer, Mamba, LSTM, with and without
#              bf16 autocast (the minGRU/Transformer targets: >= 2x at K=20, >= 4x at K=200)
#   ddp        recurrl bench decision ddp: torchrun --nproc_per_node 2 on the one GPU (NCCL) against
#              one process; ddp_gloo the same on gloo when NCCL refuses (it may refuse 2 ranks on 1 GPU)
#   mamba      the Mamba backbone on mamba_ssm's kernel against its PyTorch path (when it installed)
#   summary    summary.json, summary.md (python -m recurrl.agents.gpu_check summary OUT_DIR)
#
# The data: the embedded Hopper dataset when minari and mujoco import, else random Pendulum episodes.
# GPU_CHECK_DEVICE=cpu runs the same steps small on the CPU (the CUDA-only ones skipped): a test of
# this script on a machine without a GPU. --dry-run prints the plan and runs nothing.
# On the lent GPU machines only 8 files come back: tar the folder, e.g.
#   bash scripts/gpu_check.sh /tmp/gpu; tar czf $OUT/gpu_check.tgz -C /tmp gpu
# They reach no package index either: carry wheels for their Python (3.12) in an ignored folder, e.g.
#   python3 -m pip download --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
#     --platform manylinux_2_28_x86_64 -d .whl gymnasium minari mujoco mambapy
# and run WHEELS=.whl bash scripts/gpu_check.sh ...; without them the steps that need gymnasium fail, saying so.
set -uo pipefail

if [ $# -lt 1 ] || [ "${1:0:1}" = "-" ]; then
  echo "usage: bash scripts/gpu_check.sh OUT_DIR [--dry-run]" >&2
  exit 2
fi
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DRY=0
[ "${2:-}" = "--dry-run" ] && DRY=1
DEVICE=${GPU_CHECK_DEVICE:-cuda}
BUDGET=${GPU_CHECK_BUDGET_S:-450}
START=$(date +%s)
mkdir -p "$1" && OUT=$(cd "$1" && pwd)
: > "$OUT/steps.jsonl"
cd "$ROOT" || exit 2
PY=python
FAILED=0

remaining() { echo $((START + BUDGET - $(date +%s))); }

record() { # record NAME STATUS SECONDS RC REASON COMMAND: one line of steps.jsonl
  python3 -c 'import json, sys
n, s, t, rc, why, cmd = sys.argv[1:7]
print(json.dumps({"step": n, "status": s, "seconds": int(t), "rc": int(rc), "reason": why, "command": cmd, "log": n + ".log"}))' \
    "$@" >>"$OUT/steps.jsonl"
}

skip() { # skip NAME REASON
  record "$1" skipped 0 0 "$2" ""
  echo "[$1] skipped: $2"
}

step() { # step NAME LIMIT_S COMMAND...: run it under a time limit, its output in OUT/NAME.log
  local name=$1 limit=$2 left t0 rc took status=ok reason=""
  shift 2
  if [ "$DRY" = 1 ]; then
    echo "[$name] (at most ${limit}s) $*"
    return 0
  fi
  left=$(remaining)
  if [ "$left" -lt 20 ]; then
    skip "$name" "out of time (budget ${BUDGET}s)"
    return 1
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "[$name] $* (at most ${limit}s)"
  t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
  rc=$?
  took=$(($(date +%s) - t0))
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    status=timeout reason="stopped after ${limit}s"
  elif [ $rc -ne 0 ]; then
    status=failed reason="exit $rc: $(grep -v '^\s*$' "$OUT/$name.log" | tail -n 1 | cut -c1-240)"
  fi
  record "$name" "$status" "$took" "$rc" "$reason" "$*"
  echo "[$name] $status in ${took}s${reason:+: $reason}"
  [ $rc -eq 0 ] || FAILED=1
  return $rc
}

has_torch() { # has_torch PYTHON: its torch sees the device
  if [ "$DEVICE" = cuda ]; then
    "$1" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1
  else
    "$1" -c 'import torch' >/dev/null 2>&1
  fi
}

pip_source() { # offline from $WHEELS, else the index with short timeouts (an offline machine fails fast)
  if [ -n "${WHEELS:-}" ]; then echo "--no-index --find-links $WHEELS"; else echo "--timeout 15 --retries 1"; fi
}

setup_python() { # sets PY (and PYTHONPATH when recurrl is linked in rather than installed)
  local python=${PYTHON:-python3} need
  if [ -x .venv/bin/python ] && has_torch .venv/bin/python; then
    PY=$ROOT/.venv/bin/python
    echo "using the checkout's .venv"
  elif has_torch "$python"; then
    PY=$(command -v "$python")
    local site=${TMPDIR:-/tmp}/recurrl-gpu-site
    mkdir -p "$site" && ln -sfn "$ROOT" "$site/recurrl"
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
    need=$("$PY" -m recurrl.agents.gpu_check missing)
    echo "using $PY with recurrl linked from $site; missing: ${need:-nothing}"
    # shellcheck disable=SC2046,SC2086
    [ -z "$need" ] || "$PY" -m pip install -q $(pip_source) $need ||
      echo "pip could not install $need: the steps that need them will fail (set WHEELS=DIR offline)"
  else
    echo "no torch that sees the $DEVICE: scripts/setup.sh"
    TORCH_SPEC=${TORCH_SPEC:-"torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"} bash scripts/setup.sh
    PY=$ROOT/.venv/bin/python
  fi
  has_torch "$PY"
}

if [ "$DRY" = 1 ]; then
  echo "[setup] a Python whose torch sees the $DEVICE: .venv, else ${PYTHON:-python3} + missing dependencies, else scripts/setup.sh"
  echo "[mamba_ssm] pip install --no-build-isolation mamba-ssm, in the background (at most 300s)"
else
  t0=$(date +%s)
  setup_python >"$OUT/setup.log" 2>&1
  rc=$?
  if [ $rc -ne 0 ] && ! has_torch "$PY"; then
    record setup failed $(($(date +%s) - t0)) $rc "no torch that sees the $DEVICE (see setup.log)" ""
    echo "[setup] failed: no torch that sees the $DEVICE; see $OUT/setup.log"
    exit 1
  fi
  record setup ok $(($(date +%s) - t0)) $rc "$(grep -v '^\s*$' "$OUT/setup.log" | grep -v '^WARNING' | sed -n '1p;$p' | uniq | tr '\n' ' ' | cut -c1-300)" ""
  echo "[setup] $(head -n 1 "$OUT/setup.log") ($(($(date +%s) - t0))s)"
  "$PY" -c 'import json, platform, subprocess, torch
info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda}
if torch.cuda.is_available():
    info["gpu"] = torch.cuda.get_device_name()
    info["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
    try:
        info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                        capture_output=True, text=True, timeout=20).stdout.strip()
    except OSError:
        pass
print(json.dumps(info))' >"$OUT/env.json" 2>/dev/null
fi

# mamba_ssm: its install (maybe a CUDA build) runs beside the other steps; the mamba step waits briefly.
MAMBA_PID=""
if [ "$DEVICE" = cuda ] && [ "$DRY" = 0 ] && ! "$PY" -c 'import mamba_ssm' >/dev/null 2>&1; then
  # shellcheck disable=SC2046
  timeout 300 "$PY" -m pip install $(pip_source) --no-build-isolation mamba-ssm >"$OUT/mamba_ssm_install.log" 2>&1 &
  MAMBA_PID=$!
fi

DATASET=recurrl/hopper/medium-v0
if [ "$DRY" = 0 ] && ! "$PY" -c 'import minari, mujoco' >/dev/null 2>&1; then
  DATASET=${TMPDIR:-/tmp}/recurrl-gpu-check-pendulum.hdf5
  "$PY" -m recurrl.agents.gpu_check dataset "$DATASET" >"$OUT/dataset.log" 2>&1 || echo "could not make $DATASET"
  echo "[data] minari or mujoco missing: random Pendulum episodes ($DATASET)"
fi

if [ "$DEVICE" = cuda ]; then
  DT=(--steps 10 --rounds 3)
  BENCH=(--seq-lens 1024,4096 --batch-sizes 1,256 --scans auto,log,triton --budget 1)
  DDP=(--steps 100 --rounds 1)
  step triton 150 "$PY" -m pytest -q -p no:cacheprovider -rs tests/test_triton_scan.py -k gpu
else
  DT=(--steps 2 --rounds 1 --hidden-dim 32 --num-layers 1 --batch-size 8)
  BENCH=(--quick --levels scan,layer --backbones mingru,lstm --scans loop,log --no-memory --threads 1)
  DDP=(--steps 10 --rounds 1 --hidden-dim 32 --num-layers 1 --batch-size 8)
  skip triton "no GPU (the CPU test suite runs the kernels in Triton's interpreter)"
fi
step bench 150 "$PY" -m recurrl bench backbones --device "$DEVICE" "${BENCH[@]}" --no-progress --out "$OUT/bench"
for k in 20 200; do
  step "dt_k$k" 90 "$PY" -m recurrl bench decision train --device "$DEVICE" --dataset "$DATASET" \
    --backbones mingru transformer mamba lstm --amp both --context-length "$k" "${DT[@]}" --json "$OUT/dt_k$k.json"
done
if ! step ddp 75 "$PY" -m recurrl bench decision ddp --device "$DEVICE" --dataset "$DATASET" --nproc 2 \
  "${DDP[@]}" --json "$OUT/ddp.json"; then
  [ "$DEVICE" = cuda ] && FAILED=0 # NCCL may refuse 2 ranks on 1 GPU: gloo is the smoke test then
  step ddp_gloo 75 env RECURRL_DIST_BACKEND=gloo "$PY" -m recurrl bench decision ddp --device "$DEVICE" \
    --dataset "$DATASET" --nproc 2 "${DDP[@]}" --json "$OUT/ddp_gloo.json"
fi

if [ "$DEVICE" != cuda ]; then
  skip mamba "no GPU (mamba_ssm's kernels are CUDA only)"
elif [ "$DRY" = 1 ]; then
  step mamba 60 "$PY" -m recurrl.agents.gpu_check mamba "$OUT/mamba.json"
else
  for _ in $(seq 30); do # the install may still be running: wait a little, not for a whole build
    { [ -z "$MAMBA_PID" ] || ! kill -0 "$MAMBA_PID" 2>/dev/null; } && break
    sleep 1
  done
  if [ -n "$MAMBA_PID" ] && kill -0 "$MAMBA_PID" 2>/dev/null; then
    kill "$MAMBA_PID" 2>/dev/null
    skip mamba "mamba_ssm was still installing (building?) when its turn came; see mamba_ssm_install.log"
  elif ! "$PY" -c 'import mamba_ssm' >/dev/null 2>&1; then
    skip mamba "mamba_ssm did not install: $(tail -n 1 "$OUT/mamba_ssm_install.log" 2>/dev/null | cut -c1-200)"
  else
    step mamba 60 "$PY" -m recurrl.agents.gpu_check mamba "$OUT/mamba.json"
  fi
fi

[ "$DRY" = 1 ] && exit 0
"$PY" -m recurrl.agents.gpu_check summary "$OUT"
echo "results in $OUT ($(($(date +%s) - START))s)"
exit $FAILED
