#!/usr/bin/env bash
# What only an NVIDIA GPU can show, in one place. It prints figures; no test depends on it.
#   1. the cuDNN fused-attention path is taken in every component's bf16 train step (MAE and diffusion included);
#   2. bf16 MFU of each component at the coinrun preset (against a bf16 matmul peak measured in-process);
#   3. the dynamics step's scratch bytes per device under each --remat policy (host offload included);
#   4. cached against uncached samplers under cuDNN (the bf16 and cache tests, run on the GPU);
#   5. cached-sampler frames/s (MaskGIT, causal, diffusion, batch 1 and 8) against the uncached sampler.
# Usage: bash scripts/gpu_check.sh [BATCH]     (from the repository root; installs the cuda extra)
# A dry run of the script itself on a CPU machine: EXTRA= PRESET=micro REQUIRE_GPU=0 bash scripts/gpu_check.sh 2
# Offline (a machine with JAX for its GPU already installed, no package index): NO_SYNC=1 runs everything with
# $PYTHON from the source tree instead of a uv environment. The checks run cheapest first (4, 3, 1-2, 5), so a
# run cut short still prints the numerics and the remat figures.
set -euo pipefail
cd "$(dirname "$0")/.."
BATCH=${1:-8}
PYTHON=${PYTHON:-python3}
PRESET=${PRESET:-coinrun}
EXTRA=${EXTRA---extra cuda}
if [ "${NO_SYNC:-0}" = 1 ]; then
  run() { local cmd=$1; shift; case $cmd in jasmine) PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} $PYTHON -m jasmine "$@" ;;
    python) PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} $PYTHON "$@" ;; esac; }
else
  $PYTHON -m uv --version >/dev/null 2>&1 || $PYTHON -m pip install --quiet uv
  $PYTHON -m uv sync --locked $EXTRA --quiet
  run() { $PYTHON -m uv run --locked $EXTRA "$@"; }
fi

run python -c 'import jax; print(f"devices: {jax.devices()}")'
if [ "${REQUIRE_GPU:-1}" = 1 ]; then
  run python -c 'import jax, sys; sys.exit(jax.default_backend() != "gpu" and "no GPU visible to JAX")'
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

echo; echo "== cached against uncached samplers under cuDNN (tests run on the GPU)"
cache_status=0
run python -m pytest -q -rA -p no:cacheprovider tests/test_bf16.py tests/test_sample.py tests/test_causal.py \
  tests/test_diffusion.py -k "cache or cached" 2>&1 || cache_status=1
echo "  pytest: $([ $cache_status = 0 ] && echo passed || echo FAILED)"

echo; echo "== remat policies: bench train dynamics ($PRESET, bf16, batch $BATCH)"
declare -A SCRATCH
for remat in none full dots offload; do
  out=$(run jasmine bench train dynamics --preset "$PRESET" --dtype bfloat16 --batch-size "$BATCH" --timed-steps 5 \
    --remat "$remat")
  SCRATCH[$remat]="$(sed -n 's/^  step time *\([0-9.]* s\).*/\1/p' <<<"$out") step, \
$(sed -n 's/^  step scratch *\(.*host\).*/\1/p' <<<"$out")"
  echo "  --remat $remat: ${SCRATCH[$remat]}"
done

declare -A MFU CALLS
for spec in tokenizer lam mae "dynamics" "dynamics --dynamics causal" "dynamics --dynamics diffusion"; do
  name=${spec// --dynamics /-}
  echo; echo "== bench train $spec ($PRESET, bf16, batch $BATCH)"
  out=$(run jasmine bench train $spec --preset "$PRESET" --dtype bfloat16 --batch-size "$BATCH" --timed-steps 20)
  echo "$out"
  MFU[$name]=$(sed -n 's/^  MFU *\([0-9.]*%\).*/\1/p' <<<"$out")
  CALLS[$name]=$(sed -n 's/.*: \([0-9]*\) cuDNN fused-attention calls.*/\1/p' <<<"$out")
done

for family in maskgit causal diffusion; do
  echo; echo "== bench sample --dynamics $family ($PRESET, bf16)"
  run jasmine bench sample --preset "$PRESET" --dtype bfloat16 --dynamics "$family" --batch-sizes 1 8 --repeats 3
done

echo; echo "== bench play ($PRESET): the GPU's default bf16 against float32 weights, alternating in one process"
run jasmine bench play --preset "$PRESET" --steps 40 --no-websocket --against float32

echo; echo "== summary"
status=0
for name in tokenizer lam mae dynamics dynamics-causal dynamics-diffusion; do
  taken=yes; [ "${CALLS[$name]:-0}" -gt 0 ] || { taken=NO; status=1; }
  printf '  %-18s bf16 MFU %-7s cuDNN attention taken: %s (%s fused calls)\n' "$name" "${MFU[$name]}" "$taken" "${CALLS[$name]}"
done
for remat in none full dots offload; do printf '  --remat %-8s %s\n' "$remat" "${SCRATCH[$remat]}"; done
[ $cache_status = 0 ] && echo "  cached = uncached under cuDNN: yes" || { echo "  cached = uncached under cuDNN: NO"; status=1; }
exit $status
