#!/usr/bin/env bash
# Installs what ringfence's real-network tests and benchmarks need beyond
# the Rust toolchain: `ip` (iproute2) and `iptables`, used by the
# network-namespace fault test (tools/tests/netns_faults.rs,
# scripts/netns-faults.sh) and by `ringfence groupbench` (partitions).
# Needs root and apt-get; does nothing when both commands are present.
# Exit status 0 when both are available afterwards, 1 otherwise.
set -uo pipefail
have() { command -v "$1" >/dev/null 2>&1; }
if have ip && have iptables; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "install-deps: ip and iptables are missing; run this script as root" >&2
    exit 1
fi
if ! have apt-get; then
    echo "install-deps: ip and iptables are missing and there is no apt-get; install iproute2 and iptables by hand" >&2
    exit 1
fi
{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 iptables; } >/dev/null 2>&1
if have ip && have iptables; then
    exit 0
fi
echo "install-deps: could not install iproute2 and iptables" >&2
exit 1
