#!/usr/bin/env bash
# Time from a daemon membership change to the new server key with N real
# daemons on loopback (encrypt): starts N daemons, waits for their keyed
# ring, kills the last one (SIGKILL) and reads `last_agreement_ns` (from the
# start of the membership change to the key) and the time since the kill at
# which every survivor showed a new key. Usage: keytime_real.sh N [runs]
set -u
N=${1:-3}; RUNS=${2:-3}
BIN=${BIN:-target/release/ringfence}
field() { grep -o "\"$1\":[0-9]*" "$2" 2>/dev/null | head -1 | cut -d: -f2; }
for run in $(seq 1 "$RUNS"); do
  dir=$(mktemp -d /tmp/ringfence-keytime.XXXXXX)
  mkdir -p "$dir/keys"
  conf="$dir/cluster.toml"
  { echo '[cluster]'; echo 'transport = "unicast"'; } > "$conf"
  for i in $(seq 0 $((N-1))); do
    key=$("$BIN" keygen daemon "d$i" --dir "$dir/keys" | grep '^public_key' | cut -d'"' -f2)
    port=$((20000 + RANDOM % 20000))
    printf '\n[[cluster.daemon]]\nid = %d\nname = "d%d"\naddress = "127.0.0.1:%d"\npublic_key = "%s"\n' "$i" "$i" "$port" "$key" >> "$conf"
  done
  printf '\n[security]\nidentity = "%s/keys/{name}.key"\n\n[paths]\nstate_dir = "%s/{name}"\n' "$dir" "$dir" >> "$conf"
  pids=()
  for i in $(seq 0 $((N-1))); do
    "$BIN" daemon --config "$conf" --name "d$i" 2>"$dir/d$i.log" & pids+=($!)
  done
  # Wait (at most 20 s) until every daemon holds a key.
  for _ in $(seq 1 200); do
    ok=1; for i in $(seq 0 $((N-1))); do [ "$(field keys_agreed "$dir/d$i/status.json")" ] && [ "$(field keys_agreed "$dir/d$i/status.json")" -ge 1 ] || ok=0; done
    [ $ok = 1 ] && break; sleep 0.1
  done
  before=$(field keys_agreed "$dir/d0/status.json")
  t0=$(date +%s%N)
  kill -9 "${pids[$((N-1))]}"
  t1=""
  for _ in $(seq 1 400); do
    ok=1; for i in $(seq 0 $((N-2))); do a=$(field keys_agreed "$dir/d$i/status.json"); [ "${a:-0}" -gt "$before" ] || ok=0; done
    if [ $ok = 1 ]; then t1=$(date +%s%N); break; fi; sleep 0.05
  done
  agree=$(field last_agreement_ns "$dir/d0/status.json")
  runns=$(field last_run_ns "$dir/d0/status.json")
  echo "daemons=$N run=$run kill_to_key_ms=$(( (${t1:-$t0} - t0) / 1000000 )) (status files refresh every 500 ms) change_to_key_ms=$(awk "BEGIN{print ${agree:-0}/1e6}") install_to_key_ms=$(awk "BEGIN{print ${runns:-0}/1e6}")"
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done; wait 2>/dev/null || true
  rm -rf "$dir"
done
