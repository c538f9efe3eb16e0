#!/usr/bin/env bash
# The continuity benchmark (issue 12): N repetitions of each of the three failover scenarios of
# the e2e module `failover` (crates/server/tests/e2e/failover.rs, driven by
# tests/browser/failover.mjs), on a release build: real redis-server, `cabine serve` nodes on
# loopback, an in-process cabine-kiosk cabin and the doctor's page in Chromium.
#
#   1. drain of the room's node: the largest gap in video RTP arrival at the receiver (the
#      page's subscribe connections, old and new, sampled every 50 ms) and between frames shown;
#   2. kill -9 of the room's node: media back (first video RTP after the gap) and telemetry back
#      (first vitals update after the gap), from the kill; missing and duplicate oximeter
#      measurements;
#   3. restart of a single node: media and telemetry back after it answers /healthz again.
#
# Prints p50/p95 (nearest rank) of each figure.
#
#   benches/continuity.sh            # 20 repetitions
#   benches/continuity.sh 2          # 2 repetitions (a smoke run)
#   BENCH_OUT=benches/results/$(date -u +%F)-continuity benches/continuity.sh
#
# Needs redis-server, /usr/bin/chromium, node and `npm ci --prefix tests/browser`. Run on an
# idle machine: the figures include the page's and the codecs' CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-20}"
out="${BENCH_OUT:-target/bench/continuity}"
mkdir -p "$out"
raw="$out/continuity.raw"
: >"$raw"
cargo build --release -p cabine-kiosk --bin cabine-kiosk
cargo test --release -p cabine-server --test e2e --no-run
echo "==> $(date -u +%FT%TZ) load: $(cut -d' ' -f1-3 /proc/loadavg); $n repetitions"
for i in $(seq 1 "$n"); do
  for t in a_drained_nodes_room_moves_with_its_page_and_kiosk \
    a_killed_nodes_room_comes_back_on_another_with_its_page_and_kiosk \
    a_restarted_single_node_gets_media_and_telemetry_back_without_a_reload; do
    if ! cargo test -q --release -p cabine-server --test e2e "failover::$t" -- --exact \
      --nocapture --test-threads=1 2>"$out/last.err" | grep '^BENCH ' | tee -a "$raw"; then
      echo "repetition $i: $t failed (see $out/last.err)" >&2
    fi
  done
done
echo "==> $(date -u +%FT%TZ) load: $(cut -d' ' -f1-3 /proc/loadavg)"
# p50/p95 per scenario and figure (nearest rank over the repetitions that ran).
awk '
  { for (i = 3; i <= NF; i++) { split($i, kv, "="); if (kv[2] ~ /^[0-9]+$/) { k = $2 " " kv[1]; v[k] = v[k] " " kv[2] } } }
  END {
    for (k in v) {
      m = split(substr(v[k], 2), xs, " ")
      for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (xs[j] + 0 < xs[i] + 0) { t = xs[i]; xs[i] = xs[j]; xs[j] = t }
      p50 = xs[int((m * 50 + 99) / 100)]; p95 = xs[int((m * 95 + 99) / 100)]
      printf "%-8s %-18s n=%-3d p50=%-7s p95=%-7s max=%s\n", substr(k, 1, index(k, " ") - 1), substr(k, index(k, " ") + 1), m, p50, p95, xs[m]
    }
  }' "$raw" | sort | tee "$out/continuity.txt"
