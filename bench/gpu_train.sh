#!/usr/bin/env bash
# Issue 8's training figures on a GPU machine, with the binaries built elsewhere:
#   CGO_ENABLED=0 go build -o bin/matsurgery ./cmd/matsurgery
#   CGO_ENABLED=0 go build -o bin/shapes ./examples/shapes
#   CGO_ENABLED=0 go test -c -o bin/cuda.test ./kernels/cuda      (and model, distill likewise)
# 1. the CUDA package's tests (forward and training conformance, NCCL) and the
#    training kernels' benchmarks; model's and distill's CUDA tests (parity of a
#    device update with the CPU trainer);
# 2. the full synthetic phi teacher and its 25% hybrid; PyTorch's twin of one
#    update (testdata/gen/bench_distill_torch.py) and `matsurgery bench-distill`
#    side by side in the same run, one table with the ratios;
# 3. the shapes example distilled on the GPU (its accuracy against the CPU's).
# Usage: bench/gpu_train.sh OUTDIR   (WORK: checkpoints, default /tmp/ms; TESTS=0,
# KERNEL_BENCH=0, SHAPES=0 skip parts; STEPS, CONFIGS, *_TIMEOUT tune the rest)
set -uo pipefail
out=${1:-/tmp/gpu-train}; mkdir -p "$out"
m=$PWD/bin/matsurgery
w=${WORK:-/tmp/ms}; mkdir -p "$w"
log() { echo "== $(date -u '+%F %T') $*"; }
log "$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1); $(nproc) cores"
for spec in "kernels/cuda:cuda" "model:model" "distill:distill"; do
  [[ ${TESTS:-1} != 0 ]] || break
  IFS=: read -r dir bin <<<"$spec"
  [[ -x bin/$bin.test ]] || continue
  run=.; [[ $bin != cuda ]] && run=CUDA
  log "GPU tests $dir ($run)"
  (cd "$dir" && timeout "${TEST_TIMEOUT:-120}" "$OLDPWD/bin/$bin.test" -test.run "$run" -test.v > "$out/test_$bin.log" 2>&1; echo "   rc $?")
  grep -E '^(--- FAIL|FAIL|ok|PASS)' "$out/test_$bin.log" | tail -n 8
  grep -cE '^--- (PASS|SKIP)' "$out/test_$bin.log" | sed 's/^/   passed or skipped: /'
done
if [[ -x bin/cuda.test && ${KERNEL_BENCH:-1} != 0 ]]; then
  log "training kernels' benchmarks"
  (cd kernels/cuda && timeout 120 "$OLDPWD/bin/cuda.test" -test.run '^$' -test.benchtime 10x \
    -test.bench 'SSDChunkScanBackward$|SoftmaxAttentionBackward|SoftmaxAttentionForwardPaths|MatMulAT|KLDivergence|AdamW|RowOps|MambaOps' > "$out/bench_kernels.log" 2>&1)
  grep -E '^Benchmark' "$out/bench_kernels.log" | head -n 40
fi
[[ -f $w/teacher/config.json ]] || { log synth; $m synth --family phi --preset full --seed 1 "$w/teacher" --force --quiet || exit 1; }
[[ -f $w/h25/mamba_config.json ]] || { log convert; $m convert --preset matvlm-25 "$w/teacher" "$w/h25" --force --quiet || exit 1; }
log "PyTorch twin of one update"
PYTHONUNBUFFERED=1 timeout "${TORCH_TIMEOUT:-240}" python3 testdata/gen/bench_distill_torch.py --variants "${TORCH_VARIANTS:-ours}" --steps 5 \
  > "$out/torch.jsonl" 2> "$out/torch.log"; echo "   rc $?"; grep -E '"summary"' "$out/torch.jsonl"; grep -iE 'error|Traceback' "$out/torch.log" | head -n 5
log "matsurgery bench-distill"
timeout "${BENCH_TIMEOUT:-200}" $m bench-distill --device cuda --configs "${CONFIGS:-bf16,f32,bf16+recompute}" --steps "${STEPS:-5}" \
  --torch "$out/torch.jsonl" "$w/teacher" "$w/h25" 2>&1 | tee "$out/bench_distill.txt"
if [[ -x bin/shapes && ${SHAPES:-1} != 0 ]]; then
  log "shapes example, distilled on the GPU"
  timeout "${SHAPES_TIMEOUT:-200}" bin/shapes -teacher cmd/matsurgery/demodata/teacher -device cuda > "$out/shapes_cuda.txt" 2> "$out/shapes_cuda.log"
  echo "   rc $?"; cat "$out/shapes_cuda.txt"; tail -n 3 "$out/shapes_cuda.log"
fi
