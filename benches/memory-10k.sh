#!/usr/bin/env bash
# Resident memory of `rialto serve` at ≈10,000 payments in flight (issue 3's memory figure).
# Starts the server alone with the `memory-10k` scenario's PSP (2.5 s per call), drives it
# with `rialto sim --scenario memory-10k --target`, samples the server's VmRSS every 200 ms
# and prints the peak. Usage: benches/memory-10k.sh [path/to/rialto] (default: release build).
set -euo pipefail
bin=${1:-target/release/rialto}
dir=$(mktemp -d)
trap 'kill "$server" "$sampler" 2>/dev/null || true; rm -rf "$dir"' EXIT
cat > "$dir/rialto.toml" <<'TOML'
[engine]
psp_inflight_max = 20000

[[psp]]
id = "slow"
kind = "sim"
latency = { kind = "fixed", ms = 2500 }
TOML
source "$(dirname "$0")/serve-alone.sh"
start_server memory 18080 19464
( while kill -0 "$server" 2>/dev/null; do
    awk '/VmRSS/ {print $2}' "/proc/$server/status"; sleep 0.2
  done ) > "$dir/rss" &
sampler=$!
drive 18080 '^(payments|throughput|latency)' --scenario memory-10k
echo "peak server RSS: $(sort -n "$dir/rss" | tail -1 | awk '{printf "%.0f MB", $1/1024}')"
