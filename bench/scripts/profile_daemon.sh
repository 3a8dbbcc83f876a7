#!/usr/bin/env bash
# Callgrind one daemon of a 3-daemon loopback cluster under `ringfence flood`.
#
#   bench/scripts/profile_daemon.sh [DAEMON] [FLOOD ARGS...]
#
# DAEMON is d0 (the sender's daemon, default), d1 or d2. The other two
# daemons run normally; the profiled one runs under
# `valgrind --tool=callgrind` (about 50 times slower), so the token timeouts
# are raised to keep the ring whole. Link security is `encrypt` unless
# LINK=none|authenticate is set. Writes callgrind.out.<pid> in $OUT (default
# /tmp/ringfence-profile) and prints the top functions (inclusive and self).
# Everything started here is stopped on exit.
set -euo pipefail
BIN=${BIN:-target/release/ringfence}
WHO=${1:-d0}
shift || true
FLOOD_ARGS=("$@")
[ ${#FLOOD_ARGS[@]} -gt 0 ] || FLOOD_ARGS=(--size 100 --messages 200000)
LINK=${LINK:-encrypt}
OUT=${OUT:-/tmp/ringfence-profile}
BIN=$(realpath "$BIN")
rm -rf "$OUT"
mkdir -p "$OUT/keys"
ports=()
for i in 0 1 2; do ports+=($(python3 -c 'import socket;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.bind(("127.0.0.1",0));print(s.getsockname()[1])')); done
{
  echo '[daemon]'
  echo 'ring_core = "none"'
  echo '[cluster]'
  echo 'transport = "unicast"'
  for i in 0 1 2; do
    echo "[[cluster.daemon]]"
    echo "id = $i"
    echo "name = \"d$i\""
    echo "address = \"127.0.0.1:${ports[$i]}\""
    if [ "$LINK" != none ]; then
      "$BIN" keygen daemon "d$i" --dir "$OUT/keys" | grep public_key
    fi
  done
  echo '[ring]'
  echo 'token_timeout_ms = 5000'
  echo 'consensus_timeout_ms = 4000'
  echo 'token_retransmit_ms = 1000'
  echo '[paths]'
  echo "state_dir = \"$OUT/{name}\""
  echo '[security]'
  echo "link_security = \"$LINK\""
  [ "$LINK" = none ] || echo "identity = \"$OUT/keys/{name}.key\""
} > "$OUT/cluster.toml"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
for d in d0 d1 d2; do
  if [ "$d" = "$WHO" ]; then
    (cd "$OUT" && exec valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.out.$d" \
      "$BIN" daemon --config "$OUT/cluster.toml" --name "$d" >"$OUT/$d.log" 2>&1) &
  else
    "$BIN" daemon --config "$OUT/cluster.toml" --name "$d" >"$OUT/$d.log" 2>&1 &
  fi
  pids+=($!)
done
sleep "${WARMUP:-8}"
"$BIN" flood --json --config "$OUT/cluster.toml" --timeout 600 "${FLOOD_ARGS[@]}" | tee "$OUT/flood.json"
cleanup
trap - EXIT
sleep 1
callgrind_annotate --inclusive=yes "$OUT/callgrind.out.$WHO" 2>/dev/null | head -60 > "$OUT/inclusive.txt" || true
callgrind_annotate "$OUT/callgrind.out.$WHO" 2>/dev/null | head -60 > "$OUT/self.txt" || true
cat "$OUT/self.txt"
