#!/usr/bin/env bash
# Side by side, in one run: `matsurgery convert --ratio 0.25` of a full-size
# synthetic TinyLLaVA-Phi-2-SigLIP-3.1B against `cp -r` of the same directory,
# plus inspect and verify of the result. Prints a table; peak RSS from /usr/bin/time -v.
# Usage: bench/convert_vs_cp.sh [WORKDIR]   (needs ~20 GB free in WORKDIR)
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-/tmp/matsurgery-bench}
mkdir -p "$work" bin
CGO_ENABLED=0 go build -o bin/matsurgery ./cmd/matsurgery
m=$PWD/bin/matsurgery
[[ -f $work/teacher/config.json ]] || $m synth --family phi --preset full --seed 1 "$work/teacher" --force
rm -rf "$work/cp" "$work/h25"
sync
measure() { # label, command…
  local label=$1; shift
  /usr/bin/time -v -o "$work/$label.time" "$@" >"$work/$label.out" 2>&1
  local wall rss
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/{print $2}' "$work/$label.time")
  rss=$(awk -F': ' '/Maximum resident set size/{print $2}' "$work/$label.time")
  printf '%-10s %12s %10.1f MiB\n' "$label" "$wall" "$(echo "$rss/1024" | bc -l)"
}
secs() { awk -F': ' '/Elapsed \(wall clock\)/{n=split($2,a,":"); s=0; for(i=1;i<=n;i++) s=s*60+a[i]; print s}' "$work/$1.time"; }
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
echo "median cp+sync ${mc}s, convert ${mv}s: convert/cp ratio $(echo "$mv/$mc" | bc -l | cut -c1-5)"
measure verify $m verify --device cpu --teacher "$work/teacher" "$work/h25"
tail -n 4 "$work/verify.out"
