#!/usr/bin/env bash
# Side by side, in one run: `matsurgery convert --ratio 0.25` of a full-size
# synthetic TinyLLaVA-Phi-2-SigLIP-3.1B against `cp -r` of the same directory,
# plus inspect and verify of the result. Prints a table; peak RSS from /usr/bin/time -v.
# Usage: bench/convert_vs_cp.sh [WORKDIR]   (needs ~20 GB free in WORKDIR)
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-/tmp/matsurgery-bench}
mkdir -p "$work" bin
command -v go >/dev/null && CGO_ENABLED=0 go build -o bin/matsurgery ./cmd/matsurgery
m=$PWD/bin/matsurgery
[[ -f $work/teacher/config.json ]] || $m synth --family phi --preset full --seed 1 "$work/teacher" --force
rm -rf "$work/cp" "$work/h25"
sync
measure() { # label, command…  (wall seconds and peak RSS; /usr/bin/time when present)
  local label=$1; shift
  local s=$EPOCHREALTIME
  if [[ -x /usr/bin/time ]]; then
    /usr/bin/time -v -o "$work/$label.time" "$@" >"$work/$label.out" 2>&1
  else
    "$@" >"$work/$label.out" 2>&1; echo "Maximum resident set size (kbytes): 0" >"$work/$label.time"
  fi
  awk -v a="$s" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.2f\n", b-a}' >"$work/$label.secs"
  local rss
  rss=$(awk -F': ' '/Maximum resident set size/{print $2}' "$work/$label.time")
  printf '%-10s %10.2f s %10.1f MiB\n' "$label" "$(cat "$work/$label.secs")" "$(awk -v k="$rss" 'BEGIN{print k/1024}')"
}
secs() { cat "$work/$1.secs"; }
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; $(date -u +%F); load $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-10s %12s %14s\n' step wall peak_rss
measure inspect $m inspect "$work/teacher"
# The disk here is noisy: alternate the two, each followed by sync (convert fsyncs its
# files; cp's writeback is counted by timing cp + sync), and compare medians.
rounds=${ROUNDS:-3}
for i in $(seq 1 "$rounds"); do
  rm -rf "$work/cp" "$work/h25"; sync
  measure "cp+sync.$i" sh -c "cp -r '$work/teacher' '$work/cp' && sync"
  rm -rf "$work/cp"; sync
  measure "convert.$i" $m convert --ratio 0.25 "$work/teacher" "$work/h25"
done
median() { for i in $(seq 1 "$rounds"); do secs "$1.$i"; done | sort -g | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
mc=$(median cp+sync); mv=$(median convert)
echo "median cp+sync ${mc}s, convert ${mv}s: convert/cp ratio $(awk -v a="$mv" -v b="$mc" 'BEGIN{printf "%.2f", a/b}')"
for i in $(seq 1 "$rounds"); do printf 'round %d: convert/cp %s\n' "$i" "$(awk -v a="$(secs convert.$i)" -v b="$(secs cp+sync.$i)" 'BEGIN{printf "%.2f", a/b}')"; done
measure verify $m verify --device cpu --teacher "$work/teacher" "$work/h25"
tail -n 4 "$work/verify.out"
