#!/usr/bin/env bash
# The collect and score benchmarks on one CUDA GPU, sized to finish in under 7 minutes on an H200
# (step timeouts add up to 410 s; estimated from the per-variant times measured at 1c78e85, not yet
# timed with this script).
# `make bench` stays the CPU entry point.
#
#   bash benchmarks/gpu.sh              # from the project root; PYTHON=python3 by default
#   WORK=/tmp/sae_sens_bench bash benchmarks/gpu.sh   # keep the assets for a rerun
#
# On a machine without a package index, run `bash ../shared/gpu/prepare.sh` first (it fetches the
# wheels sae_bench needs into .whl/); this script installs them from there when .whl/ exists.
# Every benchmark prints each line as soon as it is measured, and each step has its own timeout,
# so a step cut short still shows what it measured and the next one runs.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
WORK=${WORK:-$(mktemp -d /tmp/sae_sens_gpu_bench.XXXXXX)}
if [ -d .whl ] && ls .whl/*.whl > /dev/null 2>&1 && [ ! -d .whl/site ]; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target .whl/site .whl/*.whl || exit 3
fi
export PYTHONPATH=$PWD/.whl/site:$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
"$PYTHON" - <<'PY' || exit 3
import torch
assert torch.cuda.is_available(), "no CUDA device: benchmarks/gpu.sh is for a GPU (make bench runs on the CPU)"
print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}")
PY
start=$SECONDS
step() {  # step SECONDS TITLE COMMAND...
  local limit=$1 title=$2
  shift 2
  echo
  echo "=== $title (limit ${limit} s; $((SECONDS - start)) s so far)"
  timeout "$limit" "$@" || echo "(step ended with status $?)"
}
# The three share one model and corpus (--corpus-tokens): each new width only builds its SAEs.
# The issue's command: forward, encode, one pass vs two, three SAEs of one hook, memory (a)-(c).
step 160 "collect, 16,384 latents" "$PYTHON" benchmarks/bench_collect.py --device cuda --width 16384 \
  --tokens 524288 --mem-tokens 32768 --repeats 1 --pair-repeats 1 --work "$WORK"
step 100 "collect, 65,536 latents (no memory runs)" "$PYTHON" benchmarks/bench_collect.py --device cuda \
  --width 65536 --tokens 262144 --corpus-tokens 524288 --repeats 1 --pair-repeats 1 --no-memory --work "$WORK"
# GemmaScope's widest: a pass must fit (tracker state is O(k x window) per latent: ~1.7 GiB here).
step 110 "fit check, 1,048,576 latents" "$PYTHON" benchmarks/bench_collect.py --device cuda --width 1048576 \
  --tokens 16384 --corpus-tokens 524288 --fit-check --work "$WORK"
step 40 "score" "$PYTHON" benchmarks/bench_score.py --device cuda
echo
echo "(gpu benchmarks: $((SECONDS - start)) s in all; assets in $WORK)"
