#!/usr/bin/env bash
# What `rialto ledger check` costs on a large store: fills a store through `rialto serve`
# (400 closed-loop users, 20% of payments half refunded, three 1 ms simulated PSPs) for the
# given number of seconds, stops the server, then audits the store and prints the audit's
# figures, its wall time and its peak resident memory.
#
# Usage: benches/ledger-check.sh [path/to/rialto] [seconds]   (after cargo build --release)
set -euo pipefail
bin=${1:-target/release/rialto}
seconds=${2:-30}
dir=$(mktemp -d)
trap 'kill "$server" 2>/dev/null || true; rm -rf "$dir"' EXIT
source "$(dirname "$0")/serve-alone.sh"
psps=$(fast_psps fast_a fast_b fast_c)
echo "$psps" > "$dir/rialto.toml"
cat > "$dir/scenario.toml" <<TOML
name = "ledger-check"
description = "Fills a store with captured and refunded payments."

[load]
mode = "closed"
vus = 400
hold_ms = $((seconds * 1000))

[mix]
refund_pct = 20
currency = "USD"

$psps
TOML
start_server ledger 18083 19467
drive 18083 '^(payments|throughput)' --scenario-file "$dir/scenario.toml"
kill "$server"
wait "$server" 2>/dev/null || true
/usr/bin/time -f "ledger check: %e s, peak RSS %M KB" \
  "$bin" ledger check --data-dir "$dir/data" --log-format text 2>&1 | grep -v "^\s*$"
