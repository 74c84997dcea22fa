#!/usr/bin/env bash
# Issue 8's multi-GPU figures on a host with two or more GPUs, with the binaries
# built elsewhere:
#   CGO_ENABLED=0 go build -o bin/matsurgery ./cmd/matsurgery
#   CGO_ENABLED=0 go test -c -o bin/distill.test ./distill
# 1. the GPUs and how they are linked (nvidia-smi topo);
# 2. the full synthetic phi teacher and its 25% hybrid (reused when present);
# 3. distill's CUDA tests, TestParallelCUDA among them: N ranks against one
#    device on the same global batch;
# 4. BenchmarkParallelUpdate: one bf16 distillation update of the same global
#    batch (SAMPLES per GPU × GPUs samples of 1428 rows) on 1 GPU and on all of
#    them, one after the other in the same process — the ratio is the figure.
# Usage: bench/gpu_parallel.sh OUTDIR   (WORK: checkpoints, default /tmp/ms;
# SAMPLES (8), BENCHTIME (5x), TEST_TIMEOUT (180), BENCH_TIMEOUT (300))
set -uo pipefail
out=${1:-/tmp/gpu-parallel}; mkdir -p "$out"
m=$PWD/bin/matsurgery
w=${WORK:-/tmp/ms}; mkdir -p "$w"
log() { echo "== $(date -u '+%F %T') $*"; }
log "$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | sort | uniq -c); $(nproc) cores"
nvidia-smi topo -m 2>/dev/null | head -n 8
[[ -f $w/teacher/config.json ]] || { log synth; $m synth --family phi --preset full --seed 1 "$w/teacher" --force --quiet || exit 1; }
[[ -f $w/h25/mamba_config.json ]] || { log convert; $m convert --preset matvlm-25 "$w/teacher" "$w/h25" --force --quiet || exit 1; }
if [[ -x bin/distill.test && ${TESTS:-1} != 0 ]]; then
  log "distill CUDA tests"
  (cd distill && timeout "${TEST_TIMEOUT:-180}" "$OLDPWD/bin/distill.test" -test.run CUDA -test.v > "$out/test_distill.log" 2>&1; echo "   rc $?")
  grep -E '^(--- |FAIL|ok|PASS)|ranks|against one' "$out/test_distill.log" | head -n 20
fi
log "BenchmarkParallelUpdate, ${SAMPLES:-8} samples per GPU"
(cd distill && MATSURGERY_BENCH_TEACHER=$w/teacher MATSURGERY_BENCH_STUDENT=$w/h25 MATSURGERY_BENCH_SAMPLES=${SAMPLES:-8} \
  timeout "${BENCH_TIMEOUT:-300}" "$OLDPWD/bin/distill.test" -test.run '^$' -test.bench BenchmarkParallelUpdate \
  -test.benchtime "${BENCHTIME:-5x}" > "$out/bench_parallel.log" 2>&1; echo "   rc $?")
grep -E '^Benchmark|ok|FAIL|panic' "$out/bench_parallel.log"
log done
