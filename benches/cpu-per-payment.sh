#!/usr/bin/env bash
# What a payment costs `rialto serve`, measured apart from the load generator: CPU time of
# the whole server per payment, CPU time of the store's writer thread (the serial part) per
# commit, bytes written to disk per commit, and the latency the load generator saw.
#
# CPU time moves far less than throughput on a shared machine, so this is the figure to
# compare two builds with (run them alternately). The load is open-loop at a fixed rate
# (default 5,000 payments/s for 10 s) through the merchant API, with three 1 ms simulated
# PSPs; `closed` drives the `max-throughput` shape instead (400 users, no think time, 8 s).
#
# Usage: benches/cpu-per-payment.sh [path/to/rialto] [rate|closed]   (after cargo build --release)
# IN_FLIGHT_MAX=N bounds an open load's payments in flight (arrivals beyond are dropped).
set -euo pipefail
bin=${1:-target/release/rialto}
load=${2:-5000}
dir=$(mktemp -d)
trap 'kill "$server" 2>/dev/null || true; rm -rf "$dir"' EXIT
source "$(dirname "$0")/serve-alone.sh"
psps=$(fast_psps fast_a fast_b fast_c)
echo "$psps" > "$dir/rialto.toml"
if [ "$load" = closed ]; then
  shape='mode = "closed"
vus = 400
hold_ms = 8000'
else
  shape="mode = \"open\"
rate_per_s = $load
in_flight_max = ${IN_FLIGHT_MAX:-20000}
hold_ms = 10000"
fi
cat > "$dir/scenario.toml" <<TOML
name = "cpu-per-payment"
description = "Payments with automatic capture at a steady load, for CPU per payment."

[load]
$shape

[mix]
currency = "USD"
$psps
TOML
start_server cpu 18081 19465
writer=$(dirname "$(grep -l '^rialto-store-wr' /proc/$server/task/*/comm | head -1)")
ticks() { awk '{print $14 + $15}' "$1"; } # utime + stime
written() { awk '/^write_bytes/ {print $2}' /proc/$server/io; }
w0=$(ticks "$writer/stat"); s0=$(ticks /proc/$server/stat); b0=$(written)
drive 18081 '^(throughput|latency)' --scenario-file "$dir/scenario.toml"
w1=$(ticks "$writer/stat"); s1=$(ticks /proc/$server/stat); b1=$(written)
commits=$(curl -s 127.0.0.1:19465/metrics | awk '/^rialto_store_batch_size_sum/ {print $2}')
batches=$(curl -s 127.0.0.1:19465/metrics | awk '/^rialto_store_batch_size_count/ {print $2}')
awk -v w=$((w1 - w0)) -v s=$((s1 - s0)) -v b=$((b1 - b0)) -v n="$commits" -v k="$batches" \
  -v hz="$(getconf CLK_TCK)" 'BEGIN {
    printf "server CPU %.0f µs/payment (2 commits each)\n", s / hz * 1e6 / (n / 2)
    printf "writer CPU %.1f µs/commit, %.1f commits/batch, %.1f KB written/commit\n",
      w / hz * 1e6 / n, n / k, b / n / 1024
  }'
