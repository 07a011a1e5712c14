#!/usr/bin/env bash
# Does `rialto serve` hold its memory under sustained load? Starts the server alone with one
# 1 ms simulated PSP, drives it open-loop at a fixed rate with `rialto sim --target` from its
# own process, and prints the server's resident memory every 10 s. With nothing growing
# without bound, it levels off once the simulated PSP's book is full (250,000 operations).
#
# Usage: benches/soak-memory.sh [path/to/rialto] [payments/s] [seconds]
#        (defaults: target/release/rialto, 4000, 120; after cargo build --release)
set -euo pipefail
bin=${1:-target/release/rialto}
rate=${2:-4000}
seconds=${3:-120}
dir=$(mktemp -d)
trap 'kill "$server" "$sampler" 2>/dev/null || true; rm -rf "$dir"' EXIT
source "$(dirname "$0")/serve-alone.sh"
psp=$(fast_psps fast)
echo "$psp" > "$dir/rialto.toml"
cat > "$dir/scenario.toml" <<TOML
name = "soak-memory"
description = "A steady open-loop load, to watch the server's memory."

[load]
mode = "open"
rate_per_s = $rate
hold_ms = $((seconds * 1000))

[mix]
currency = "USD"
$psp
TOML
start_server soak 18082 19466
( start=$(date +%s)
  while kill -0 "$server" 2>/dev/null; do
    sleep 10
    echo "t=$(($(date +%s) - start)) s  server RSS $(awk '/VmRSS/ {printf "%.0f MB", $2/1024}' "/proc/$server/status")"
  done ) &
sampler=$!
drive 18082 '^(payments|throughput|success|latency)' --scenario-file "$dir/scenario.toml"
echo "after the load: server RSS $(awk '/VmRSS/ {printf "%.0f MB", $2/1024}' "/proc/$server/status")"
