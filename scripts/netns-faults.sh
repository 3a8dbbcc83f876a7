#!/usr/bin/env bash
# The long real-network fault run (issue 15's "Must show"): real daemons in
# network namespaces, encrypted links, an open and a VS group loaded from a
# client on every daemon, and per configuration (3 and 5 daemons, unicast
# and multicast): lasting one-way cuts in both directions of the token,
# 10 partitions, 10 pauses, loss and kill -9 with restart. Every client
# history is checked; one `result` line per configuration, and the fault
# lines with each fault's longest delivery gap. Needs root, ip and iptables.
#
#   scripts/netns-faults.sh                 the whole run (about 15 minutes)
#   ONEWAY_SECS=15 scripts/netns-faults.sh  shorter one-way cuts
#   KEEP=/tmp/nf scripts/netns-faults.sh    keep configs and daemon logs
#
# Extra arguments go to every `ringfence netfault` (e.g. --rate 450).
# Exits non-zero if any configuration had a violation.
set -uo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p ringfence-tools || exit 2
bin=target/release/ringfence
oneway=${ONEWAY_SECS:-30}
faults="oneway-token=1,oneway-against=1,partition=10,pause=10,loss=2,kill=2"
status=0
for daemons in 3 5; do
    senders=$(( daemons == 3 ? 2 : 3 ))
    for transport in unicast multicast; do
        keep=()
        if [ -n "${KEEP:-}" ]; then keep=(--keep "$KEEP/$daemons-$transport"); fi
        echo "== $daemons daemons, $transport"
        "$bin" netfault --daemons "$daemons" --transport "$transport" --senders "$senders" \
            --rate 300 --faults "$faults" --oneway-secs "$oneway" --hold-secs 2 \
            --pause-ms 450 --settle-secs 2.5 --max-gap-ms 2000 "${keep[@]}" "$@" || status=1
    done
done
exit $status
