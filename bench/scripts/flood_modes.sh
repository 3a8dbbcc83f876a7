#!/usr/bin/env bash
# Issue 7 (c): throughput of `ringfence flood` by client group protection
# mode. 3 spawned daemons (link_security = encrypt, io_uring), 1 sender,
# 1 receiver per daemon, agreed service; for each payload size, six
# configurations run interleaved, ROUNDS times over:
#   none local, integrated-vs local, optimized-evs local, three-step local,
#   three-step remote TLS, none remote TLS
# ("local": Unix socket; "remote TLS": TCP+TLS with a client certificate).
# Prints one markdown row per size and configuration: the msgs/s of every
# round, their median, the ratio of that median to the median of `none`
# local at the same size, and median daemon and client CPU per message.
# Usage: bench/scripts/flood_modes.sh  (ROUNDS=5 SIZES="100 1000 5000 10000")
# Every run is bounded (--timeout) and stops the daemons it starts.
set -u
BIN=${BIN:-target/release/ringfence}
[ -x "$BIN" ] || cargo build --release -p ringfence-tools >&2
ROUNDS=${ROUNDS:-5}
SIZES=${SIZES:-100 1000 5000 10000}
LABELS=("none local" "integrated-vs local" "optimized-evs local" "three-step local"
  "three-step remote TLS" "none remote TLS")
ARGS=("--mode none" "--mode integrated-vs" "--mode optimized-evs" "--mode three-step"
  "--mode three-step --remote-tls" "--mode none --remote-tls")
count() { # messages for a payload size: a few seconds of load each
  case $1 in
    100) echo 300000 ;; 1000) echo 100000 ;; 5000) echo 30000 ;; *) echo 15000 ;;
  esac
}
field() { grep -o "\"$1\":[0-9.eE+-]*" <<<"$2" | head -1 | cut -d: -f2; }
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {
  if (NR == 0) print "-"; else if (NR % 2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2 }'; }
declare -A RATE DCPU CCPU
for round in $(seq 1 "$ROUNDS"); do
  for size in $SIZES; do
    for i in "${!LABELS[@]}"; do
      # shellcheck disable=SC2086 # ARGS[i] is a list of flags
      out=$("$BIN" flood --json --size "$size" --messages "$(count "$size")" --timeout 60 ${ARGS[$i]} 2>/dev/null)
      ok=$(grep -o '"ok":[a-z]*' <<<"$out" | cut -d: -f2)
      key="$size/$i"
      if [ "$ok" = true ]; then
        RATE[$key]="${RATE[$key]:-} $(printf '%.0f' "$(field msgs_per_sec "$out")")"
        DCPU[$key]="${DCPU[$key]:-} $(field daemon_cpu_us_per_msg "$out")"
        CCPU[$key]="${CCPU[$key]:-} $(field client_cpu_us_per_msg "$out")"
      else
        RATE[$key]="${RATE[$key]:-} failed"
      fi
      echo "round $round size $size ${LABELS[$i]}: ${out:-no output}" >&2
    done
  done
done
echo "| size B | configuration | msgs/s per round | median msgs/s | ratio to none local | daemon CPU µs/msg | client CPU µs/msg |"
echo "|---|---|---|---|---|---|---|"
for size in $SIZES; do
  base=$(median <<<"${RATE[$size/0]//failed/}")
  for i in "${!LABELS[@]}"; do
    key="$size/$i"
    med=$(median <<<"${RATE[$key]//failed/}")
    ratio=$(awk -v m="$med" -v b="$base" 'BEGIN { if (b > 0 && m != "-") printf "%.2f", m / b; else print "-" }')
    printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$size" "${LABELS[$i]}" "$(sed 's/^ //; s/ /, /g' <<<"${RATE[$key]}")" \
      "$med" "$ratio" "$(median <<<"${DCPU[$key]:-}")" "$(median <<<"${CCPU[$key]:-}")"
  done
done
