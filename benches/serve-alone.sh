# Shared by the bench scripts that measure `rialto serve` apart from its load generator.
# Source it after setting `bin` (the rialto binary) and `dir` (a scratch directory); the
# server reads its config from "$dir/rialto.toml".

# fast_psps ID...: a `[[psp]]` table for each id, a simulated PSP answering in 1 ms. The same
# text serves the server's config and a scenario file (`kind` defaults to "sim" in both).
fast_psps() {
  printf '[[psp]]\nid = "%s"\nlatency = { kind = "fixed", ms = 1 }\n\n' "$@"
}

# start_server NAME API_PORT OPS_PORT: creates merchant NAME (no rate limit) in "$dir/data",
# starts the server on loopback and waits until it answers. Sets `key` and `server` (its pid).
start_server() {
  key=$("$bin" merchant create --name "$1" --rate-per-min 0 --data-dir "$dir/data" 2>/dev/null)
  "$bin" serve --config "$dir/rialto.toml" --data-dir "$dir/data" \
    --listen "127.0.0.1:$2" --ops-listen "127.0.0.1:$3" >/dev/null 2>&1 &
  server=$!
  for _ in $(seq 50); do
    curl -sf "127.0.0.1:$3/healthz" >/dev/null 2>&1 && break
    sleep 0.1
  done
}

# drive API_PORT PATTERN SIM-ARGS...: runs `rialto sim --target` at the server and prints the
# summary lines matching PATTERN; the load generator's stderr is shown only if it fails.
drive() {
  local port=$1 pattern=$2
  shift 2
  if ! RIALTO_API_KEY=$key "$bin" sim "$@" --target "http://127.0.0.1:$port" --quiet \
    2>"$dir/sim.err" | grep -E "$pattern"; then
    cat "$dir/sim.err" >&2
    return 1
  fi
}
