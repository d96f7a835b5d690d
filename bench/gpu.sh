#!/usr/bin/env bash
# One command for an H100/H200 (at most about 8 minutes): GPU tests, glsmamba verify, fused vs unfused ordered scan,
# the benchmark sweeps, plots and summary, all into one folder. Then commit that folder's files under bench/results/<device>/:
#     bash bench/gpu.sh [OUT_DIR]            # default: $OUT, else bench/results/local/gpu-<timestamp>
#     python -m glsmamba.bench.store OUT_DIR          # copies CSV, PNGs, summary.md, logs to bench/results/<device>/
# Each stage has a hard time limit, so a slow stage cannot eat the others' time; the sweeps write their CSV row by
# row, so a stage cut short keeps what it measured. Limits can be changed through the environment (seconds):
#     TESTS_S=120 VERIFY_S=45 FUSED_S=35 HEADLINE_S=75 NET_S=55 OPS_S=55 (sweeps get GRACE_S=20 more to finish a measurement)
# torch.compile is measured at the headline size only (one compile per op and size takes tens of seconds to
# minutes); for compile curves run e.g. `python -m glsmamba.bench --backends reference compile --T 5 8 --hw 32x24 64x48`.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-bench/results/local/gpu-$(date +%Y%m%d-%H%M%S)}}"
mkdir -p "$OUT_DIR"
TESTS_S=${TESTS_S:-120}; VERIFY_S=${VERIFY_S:-45}; FUSED_S=${FUSED_S:-35}; HEADLINE_S=${HEADLINE_S:-75}; NET_S=${NET_S:-55}; OPS_S=${OPS_S:-55}
GRACE_S=${GRACE_S:-20}
PY=${PYTHON:-python3}
t0=$SECONDS
stage() { echo "== [$((SECONDS - t0)) s] $*"; }

stage "environment -> $OUT_DIR/env.txt"
{ nvidia-smi || true; $PY -m glsmamba info || true; $PY -m pip list 2>/dev/null | grep -iE "^(torch|triton|mambapy|numpy) " || true; } \
    > "$OUT_DIR/env.txt" 2>&1

stage "GPU tests (pytest -m gpu, limit ${TESTS_S} s)"
timeout "$TESTS_S" $PY -m pytest -q -m gpu tests/ > "$OUT_DIR/pytest_gpu.log" 2>&1
echo "pytest exit $?"; tail -n 3 "$OUT_DIR/pytest_gpu.log"

stage "glsmamba verify (limit ${VERIFY_S} s)"
if $PY -m glsmamba --help 2>/dev/null | grep -qw verify; then
    timeout "$VERIFY_S" $PY -m glsmamba verify > "$OUT_DIR/verify.log" 2>&1
    echo "verify exit $?"; tail -n 5 "$OUT_DIR/verify.log"
else
    echo "glsmamba verify is not available in this checkout" | tee "$OUT_DIR/verify.log"
fi

stage "fused vs unfused ordered scan, 2 x 5 x 64 x 48, C=128, bf16 (fwd, fwd+bwd; limit ${FUSED_S} s each)"
for mode in fwd fwd+bwd; do
    timeout "$FUSED_S" $PY -m glsmamba.bench.bench_ordered_scan --mode "$mode" --out "$OUT_DIR" >> "$OUT_DIR/ordered_scan_fused.log" 2>&1
    echo "exit $?"
done
cat "$OUT_DIR/ordered_scan_fused.log"

# Sweeps append to one results.csv (--skip-existing: no point measured twice). Headline first: it holds the targets.
SWEEP=($PY -m glsmamba.bench --out "$OUT_DIR" --skip-existing --rep-ms 50 --no-plot -q)
stage "sweep 1/3: every op and network at T=5 x 64 x 48 (limit ${HEADLINE_S} s)"
timeout $((HEADLINE_S + GRACE_S)) "${SWEEP[@]}" --T 5 --hw 64x48 --time-budget "$HEADLINE_S" > "$OUT_DIR/sweep_headline.log" 2>&1
echo "exit $?"; tail -n 1 "$OUT_DIR/sweep_headline.log"
stage "sweep 2/3: networks vs resolution (limit ${NET_S} s)"
timeout $((NET_S + GRACE_S)) "${SWEEP[@]}" --ops net --backends triton sdpa sdpa_math --modes fwd fwd+bwd --time-budget "$NET_S" > "$OUT_DIR/sweep_net.log" 2>&1
echo "exit $?"; tail -n 1 "$OUT_DIR/sweep_net.log"
stage "sweep 3/3: ops vs resolution (limit ${OPS_S} s)"
timeout $((OPS_S + GRACE_S)) "${SWEEP[@]}" --ops ops attention --backends reference triton mambapy sdpa sdpa_math --time-budget "$OPS_S" > "$OUT_DIR/sweep_ops.log" 2>&1
echo "exit $?"; tail -n 1 "$OUT_DIR/sweep_ops.log"

stage "plots and summary"
$PY -m glsmamba.bench --plot-only "$OUT_DIR" 2>&1 | tail -n 1
sed -n '/## Targets/,/^## All/p' "$OUT_DIR/summary.md" | head -n 9
stage "done in $((SECONDS - t0)) s; results in $OUT_DIR; store them with: $PY -m glsmamba.bench.store $OUT_DIR"
