#!/usr/bin/env bash
# A PSP outage across three kinds of process on loopback: two `rialto psp-sim`s (the primary
# is down from 10 s to 20 s of the load), `rialto serve` calling both over HTTP (signed), and
# `rialto sim --target` with 100 closed-loop users for 30 s. The load generator starts the
# PSPs' incident schedules with its load (--psp-sim) and reads the server's breaker changes
# and a ledger check of its live store (--ops), then the store is audited again offline.
#
# Usage: benches/three-processes.sh [path/to/rialto] [report dir]   (after cargo build --release)
set -euo pipefail
bin=${1:-target/release/rialto}
report=${2:-}
dir=$(mktemp -d)
psp_pids=()
trap 'kill "$server" "${psp_pids[@]}" 2>/dev/null || true; rm -rf "$dir"' EXIT
source "$(dirname "$0")/serve-alone.sh"
export RIALTO_PSP_SECRET=three-processes-psp-secret
export RIALTO_ADMIN_TOKEN=three-processes-admin-token

# psp_sim ID PORT LATENCY [INCIDENT]: a `rialto psp-sim` serving PSP ID on PORT.
psp_sim() {
  printf '[psp]\nid = "%s"\nlatency = %s\n%s' "$1" "$3" "${4:-}" > "$dir/$1.toml"
  "$bin" psp-sim --listen "127.0.0.1:$2" --config "$dir/$1.toml" >/dev/null 2>&1 &
  psp_pids+=($!)
  printf '[[psp]]\nid = "%s"\nkind = "http"\nurl = "http://127.0.0.1:%s"\nsecret = "%s"\n\n' \
    "$1" "$2" "$RIALTO_PSP_SECRET" >> "$dir/rialto.toml"
}
: > "$dir/rialto.toml"
psp_sim primary 17011 '{ kind = "uniform", min_ms = 5, max_ms = 30 }' \
  $'[[psp.incident]]\nkind = "outage"\nstart_ms = 10000\nend_ms = 20000\n'
echo "priority = 1" >> "$dir/rialto.toml"
psp_sim secondary 17012 '{ kind = "uniform", min_ms = 10, max_ms = 40 }'
echo "priority = 2" >> "$dir/rialto.toml"
cat > "$dir/scenario.toml" <<TOML
name = "three-processes"
description = "The primary PSP, a rialto psp-sim, is down from 10 s to 20 s of a 30 s hold."

[load]
mode = "closed"
vus = 100
hold_ms = 30000
think_min_ms = 20
think_max_ms = 80
TOML
start_server three 18084 19468
drive 18084 '^(duration|payments|throughput|success|latency|outcomes|psp |breaker|ledger)' \
  --scenario-file "$dir/scenario.toml" --ops http://127.0.0.1:19468 \
  --psp-sim primary=http://127.0.0.1:17011 --psp-sim secondary=http://127.0.0.1:17012 \
  ${report:+--report "$report"}
kill "$server"
wait "$server" 2>/dev/null || true
echo "offline: $("$bin" ledger check --data-dir "$dir/data" 2>/dev/null | tail -1)"
