#!/usr/bin/env bash
# The cluster benchmark (issue 11; figures and how to read them in BENCHMARKS.md, "Cluster").
# Starts a real redis-server (Debian's `redis-server`, no persistence) on a free loopback port
# and `cabine serve` nodes on it, all child processes of `cabine-loadgen cluster`:
#   1. join time: N 1:1 consultations whose participants are given the room's node's URL
#      (direct) and N given another node's URL (each WHIP/WHEP POST redirected with 307),
#      alternating; signalling time per POST and time from a receiver's offer to its first
#      media packet, p50/p99;
#   2. registry cost: idle windows of a single node (no store) and of the cluster's nodes, with
#      no room and with idle rooms (one connected subscriber each): CPU per node from
#      /proc/<pid>/stat, Redis's CPU, Redis commands per second per node (INFO stats and
#      INFO commandstats deltas over the window).
#
#   benches/cluster.sh                                  # 3 nodes, 20 + 20 consultations,
#                                                       # 60 s windows, 0 and 20 idle rooms
#   benches/cluster.sh --nodes 2 -n 10 --window 30      # any `cabine-loadgen cluster` flag
#   BENCH_OUT=benches/results/$(date -u +%F)-cluster benches/cluster.sh
#
# Runs on the host's loopback (no Janus, so no network namespace as in scripts/bench). Writes
# cluster.json and cluster.txt into $BENCH_OUT (default target/bench/cluster).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v redis-server >/dev/null 2>&1 || {
  echo "redis-server is needed (apt-get install redis-server)" >&2
  exit 1
}
cargo build --release -p cabine-server --bin cabine && cargo build --release -p cabine-loadgen --bin cabine-loadgen
out="${BENCH_OUT:-target/bench/cluster}"
mkdir -p "$out"
echo "==> $(date -u +%FT%TZ) load: $(cut -d' ' -f1-3 /proc/loadavg)"
./target/release/cabine-loadgen cluster --cabine-bin target/release/cabine --out "$out" "$@"
echo "==> $(date -u +%FT%TZ) load: $(cut -d' ' -f1-3 /proc/loadavg)"
