#!/usr/bin/env bash
# On a GPU machine, with bin/matsurgery and the test binaries built elsewhere
# (CGO_ENABLED=0 go build -o bin/matsurgery ./cmd/matsurgery; go test -c -o bin/X.test ./X):
# GPU tests, then the full-size synthetic phi teacher, its 25% hybrid, verify on
# GPU and CPU side by side, and the benchmark of bench/gpu_bench.sh (teacher and
# its 12.5/25/50% hybrids against each other and against transformers).
# Usage: bench/gpu.sh OUTDIR
set -uo pipefail
out=${1:-/tmp/gpu-out}; mkdir -p "$out"
m=$PWD/bin/matsurgery
w=/tmp/ms; mkdir -p $w
log() { echo "== $*"; }
t() { local s=$EPOCHREALTIME; "$@"; local rc=$?; awk -v a="$s" -v b="$EPOCHREALTIME" -v rc=$rc 'BEGIN{printf "   wall %.2f s (rc %d)\n", b-a, rc}'; return $rc; }
log devices; $m devices
for spec in "kernels/cuda:cuda:." "model:model:CUDA" "verify:verify:CUDA"; do
  IFS=: read -r dir bin run <<<"$spec"
  [[ -x bin/$bin.test ]] || continue
  log "GPU tests $dir"; (cd $dir && t "$OLDPWD/bin/$bin.test" -test.run "$run" -test.v 2>&1 | grep -E '^(=== RUN|--- |PASS|FAIL|ok)|Error|error' | tail -n 60)
done
log synth; t $m synth --family phi --preset full --seed 1 $w/teacher --force
log convert; t $m convert --ratio 0.25 $w/teacher $w/h25 --force --quiet
log verify cuda; t $m verify --device cuda --teacher $w/teacher $w/h25 > $out/verify_cuda.txt; tail -n 5 $out/verify_cuda.txt
log "verify cuda again (kernels now in the NVRTC disk cache)"; t $m verify --device cuda --teacher $w/teacher $w/h25 > $out/verify_cuda2.txt; tail -n 3 $out/verify_cuda2.txt
log verify cpu; t $m verify --device cpu --teacher $w/teacher $w/h25 > $out/verify_cpu.txt; tail -n 5 $out/verify_cpu.txt
log "bench (bench/gpu_bench.sh: teacher, 12.5/25/50% hybrids, transformers generate)"; WORK=$w t bench/gpu_bench.sh "$out"
