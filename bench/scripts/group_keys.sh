#!/usr/bin/env bash
# Issue 7: client group keys, integrated against layered (docs/benchmarks.md,
# "Client group keys: integrated vs layered").
#   (b) one daemon's groups layer rekeying N groups of 13 after a ring
#       change, in-process; bare derivation; layered TGDH computation.
#   (a) real daemons on loopback: join, leave, kill -STOP, kill -CONT to
#       the new keyed view at every member.
# Usage: bench/scripts/group_keys.sh [b|a|all] (default all). Honours
# CARGO_TARGET_DIR. Every daemon (a) starts is killed on exit.
set -eu
what=${1:-all}
target=${CARGO_TARGET_DIR:-target}
if [ "$what" = b ] || [ "$what" = all ]; then
  cargo build --profile bench -p ringfence-bench --example rekey
  "$target/release/examples/rekey" 7
fi
if [ "$what" = a ] || [ "$what" = all ]; then
  cargo build --release -p ringfence-tools
  cargo build --release -p ringfence-bench --example keyed_views
  "$target/release/examples/keyed_views" --daemons 3,5 --sizes 10,50,100,200 --repeats 5
fi
