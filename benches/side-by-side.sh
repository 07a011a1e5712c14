#!/usr/bin/env bash
# Two builds compared on a noisy machine: both run issue 3's in-process `max-throughput`
# scenario at the same time, so whatever else the machine is doing slows both alike, and each
# reports its throughput and its whole process's CPU time per payment (load generator
# included). Run it more than once; swap the order to check for bias.
#
# Usage: benches/side-by-side.sh path/to/rialto-a path/to/rialto-b [duration-scale]
set -euo pipefail
a=$1
b=$2
scale=${3:-0.33}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
run() { # bin out
  /usr/bin/time -f "cpu %U %S" -o "$2.time" \
    "$1" sim --scenario max-throughput --duration-scale "$scale" --quiet >"$2" 2>&1
}
run "$a" "$dir/a" &
run "$b" "$dir/b" &
wait
for side in a b; do
  out=$dir/$side
  payments=$(awk '/^payments/ {print $2}' "$out")
  awk -v bin="$([ $side = a ] && echo "$a" || echo "$b")" -v n="$payments" \
    -v cpu="$(awk '/^cpu/ {print $2 + $3}' "$out.time")" \
    -v tp="$(awk '/^throughput/ {print $2}' "$out")" \
    'BEGIN { printf "%s: %s payments/s, %.0f µs CPU per payment\n", bin, tp, cpu * 1e6 / n }'
done
