#!/usr/bin/env bash
# The tracker, collect and score benchmarks on one CUDA GPU. Each step is its own command with its
# own timeout (none above 160 s), the tracker alone first (about a minute): its ratios and counts
# print as soon as they exist, so a session whose device time is short still gets the headline.
# The whole log also goes to $WORK/gpu.log.
# `make bench` stays the CPU entry point.
#
#   bash benchmarks/gpu.sh              # from the project root; PYTHON=python3 by default
#   STEPS=tracker bash benchmarks/gpu.sh   # only some steps: tracker, collect16k, collect65k, fit1m, score
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
STEPS=${STEPS:-tracker collect16k collect65k fit1m score}
mkdir -p "$WORK"
exec > >(tee -a "$WORK/gpu.log") 2>&1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,power.draw --format=csv 2>/dev/null || true
"$PYTHON" - <<'PY' || exit 3
import torch
assert torch.cuda.is_available(), "no CUDA device: benchmarks/gpu.sh is for a GPU (make bench runs on the CPU)"
print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}")
PY
start=$SECONDS
step() {  # step NAME SECONDS TITLE COMMAND...
  local name=$1 limit=$2 title=$3
  shift 3
  case " $STEPS " in *" $name "*) ;; *) return 0 ;; esac
  echo
  echo "=== $title (limit ${limit} s; $((SECONDS - start)) s so far)"
  timeout "$limit" "$@" || echo "(step ended with status $?)"
}
# The tracker alone on synthetic codes: current vs fixed-shape, ms, launches and syncs per batch.
step tracker 120 "tracker only, 16,384 and 65,536 latents" "$PYTHON" benchmarks/bench_tracker.py --device cuda \
  --widths 16384,65536 --batches 12
# The collect steps share one model and corpus (--corpus-tokens): each new width only builds its SAEs.
# Forward, encode, one pass vs two, three SAEs of one hook (no memory runs: GPU memory is reported).
step collect16k 160 "collect, 16,384 latents" "$PYTHON" benchmarks/bench_collect.py --device cuda --width 16384 \
  --tokens 524288 --repeats 1 --pair-repeats 1 --no-memory --work "$WORK"
step collect65k 120 "collect, 65,536 latents" "$PYTHON" benchmarks/bench_collect.py --device cuda \
  --width 65536 --tokens 262144 --corpus-tokens 524288 --repeats 1 --pair-repeats 1 --no-memory --work "$WORK"
# GemmaScope's widest: a pass must fit (tracker state: 16 slots x 41 values x 12 bytes per latent, ~8 GiB).
step fit1m 110 "fit check, 1,048,576 latents" "$PYTHON" benchmarks/bench_collect.py --device cuda --width 1048576 \
  --tokens 16384 --corpus-tokens 524288 --fit-check --work "$WORK"
step score 40 "score" "$PYTHON" benchmarks/bench_score.py --device cuda
echo
echo "(gpu benchmarks: $((SECONDS - start)) s in all; assets in $WORK)"
