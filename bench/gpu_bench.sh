#!/usr/bin/env bash
# The fair inference benchmark, on a GPU machine, with bin/matsurgery built
# elsewhere (CGO_ENABLED=0 go build -o bin/matsurgery ./cmd/matsurgery):
#  1. the full-size synthetic phi teacher (TinyLLaVA-Phi-2-SigLIP-3.1B shapes)
#     and its 12.5/25/50% hybrids with the reference code's layer lists;
#  2. the teacher in transformers' generate (bf16, SDPA) on the same GPU and
#     prompt lengths (testdata/gen/bench_hf_generate.py → hf.jsonl);
#  3. `matsurgery bench` of the teacher and the three hybrids, one after the
#     other on the same engine with the same options, in one table with the
#     ratios to the teacher, transformers' figures merged in, and the time of
#     one softmax attention layer alone at each context.
# Usage: bench/gpu_bench.sh OUTDIR   (MATSURGERY: the binary, default bin/matsurgery)
# Environment: CONTEXTS (1024,4096,16384,32768), DECODE (32), PRECISION (bf16), REPEATS (1;
# 3 steadies the short-context decode figures, which vary run to run),
# WORK (/tmp/ms: checkpoints, reused when present), HF_TIMEOUT and
# BENCH_TIMEOUT (seconds, 600 each), SMOKE=0 to skip the quick check.
set -uo pipefail
out=${1:-/tmp/gpu-bench}; mkdir -p "$out"
m=${MATSURGERY:-$PWD/bin/matsurgery}
w=${WORK:-/tmp/ms}; mkdir -p "$w"
ctx=${CONTEXTS:-1024,4096,16384,32768}
dec=${DECODE:-32}
prec=${PRECISION:-bf16}
log() { echo "== $(date -u '+%F %T') $*"; }
log "$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1); $(nproc) cores; $($m version 2>/dev/null)"
if [[ ! -f $w/teacher/config.json ]]; then
  log synth; $m synth --family phi --preset full --seed 1 "$w/teacher" --force --quiet || exit 1
fi
for p in 12.5 25 50; do
  [[ -f $w/h$p/mamba_config.json ]] || { log "convert --preset matvlm-$p"; $m convert --preset "matvlm-$p" "$w/teacher" "$w/h$p" --force --quiet & }
done
wait
for p in 12.5 25 50; do [[ -f $w/h$p/mamba_config.json ]] || { echo "convert matvlm-$p failed"; exit 1; }; done
if [[ ${SMOKE:-1} != 0 ]]; then
  log "smoke: bench h25 at 256 tokens"
  $m bench --device cuda --precision "$prec" --contexts 256 --decode 2 "$w/h25" || exit 1
fi
log "transformers generate"
PYTHONUNBUFFERED=1 timeout "${HF_TIMEOUT:-600}" python3 testdata/gen/bench_hf_generate.py "$w/teacher" --contexts "$ctx" --decode "$dec" \
  > "$out/hf.jsonl" 2> "$out/hf.log"
echo "   rc $?"; cat "$out/hf.jsonl"; grep -iE 'error|Traceback' "$out/hf.log" | head -n 5
ext=(); [[ -s $out/hf.jsonl ]] && ext=(--external "$out/hf.jsonl")
log "matsurgery bench --precision $prec"
timeout "${BENCH_TIMEOUT:-600}" $m bench --device cuda --precision "$prec" --contexts "$ctx" --decode "$dec" --attention --repeats "${REPEATS:-1}" \
  --label teacher,h12.5,h25,h50 "${ext[@]}" "$w/teacher" "$w/h12.5" "$w/h25" "$w/h50" \
  > "$out/bench.txt" 2> >(tee "$out/bench_progress.txt" >&2)
echo "   rc $?"; cat "$out/bench.txt"
log done
