#!/usr/bin/env bash
# Runs `ringfence flood` over a matrix of configurations on this machine and
# prints markdown table rows: size, configuration, msgs/s, MB/s, p50, p99,
# daemon CPU per message. Usage:
#   bench/scripts/flood_matrix.sh transport   # issue 4: backends, accelerated ring, packing, multicast
#   bench/scripts/flood_matrix.sh security    # issue 5: link_security encrypt / authenticate / none
#   bench/scripts/flood_matrix.sh latency     # p50/p99 at 10,000 msgs/s of 100 B
# Every run is bounded (--timeout) and stops the daemons it starts.
set -u
BIN=${BIN:-target/release/ringfence}
[ -x "$BIN" ] || cargo build --release -p ringfence-tools >&2
count() { # messages for a payload size: about 20 MB or 200k messages
  local size=$1 n=$(( 20000000 / $1 ))
  [ "$n" -gt 200000 ] && n=200000
  [ "$n" -lt 10000 ] && n=10000
  echo "$n"
}
field() { grep -o "\"$1\":[0-9.eE+-]*" <<<"$2" | head -1 | cut -d: -f2; }
run() { # size label args...
  local size=$1 label=$2; shift 2
  local out
  out=$("$BIN" flood --json --size "$size" --messages "$(count "$size")" --timeout 120 "$@" 2>/dev/null)
  if [ -z "$out" ]; then echo "| $size | $label | failed | | | | |"; return; fi
  printf '| %s | %s | %.0f | %.1f | %s | %s | %s |\n' "$size" "$label" \
    "$(field msgs_per_sec "$out")" "$(field mbytes_per_sec "$out")" \
    "$(field p50_us "$out")" "$(field p99_us "$out")" "$(field daemon_cpu_us_per_msg "$out")"
}
echo "| size B | configuration | msgs/s | MB/s | p50 µs | p99 µs | daemon CPU µs/msg |"
echo "|---|---|---|---|---|---|---|"
case "${1:-transport}" in
  transport)
    for size in 100 700 1000 1400 5000 10000; do
      run "$size" "io_uring" --backend io_uring --link-security none
      run "$size" "portable" --backend portable --link-security none
      run "$size" "io_uring, accelerated off" --backend io_uring --link-security none --no-accelerated
      run "$size" "io_uring, packing off" --backend io_uring --link-security none --no-packing
      run "$size" "io_uring, IP multicast" --backend io_uring --link-security none --transport multicast
    done ;;
  security)
    for size in 100 1000 5000 10000; do
      for mode in none encrypt authenticate; do
        run "$size" "$mode" --link-security "$mode"
      done
    done ;;
  latency)
    for mode in none encrypt; do
      "$BIN" flood --json --size 100 --messages 50000 --rate 10000 --timeout 120 --link-security "$mode" 2>/dev/null \
        | sed "s/^/$mode: /"
    done ;;
esac
