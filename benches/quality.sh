#!/usr/bin/env bash
# The quality benchmark (issue 14): per link profile, the real `cabine-kiosk dial` (synthetic
# stethoscope, microphone, device and room cameras, congestion control on) publishing to a
# release `cabine`, and a WHEP receiver on the doctor's side, each behind its own in-process
# cabine-impair relay with the profile; see `cabine-loadgen quality --help` and BENCHMARKS.md
# "Quality on poor links (issue 14)" for what is measured and how.
#
#   benches/quality.sh                          # rural-adsl, 4g-doctor, severe: 15 s + 60 s each
#   DURATION=10 WARMUP=5 benches/quality.sh     # a short run
#   PROFILES=4g-doctor benches/quality.sh
#   BENCH_OUT=benches/results/$(date -u +%F)-quality benches/quality.sh
#
# About (WARMUP + DURATION + ~5 s) per profile: ~4 min for the default three. Run on an idle
# machine: the kiosk's two VP8 encoders, the server and the receiver share its cores.
# Janus cannot take part: the publisher is the real cabine-kiosk, which speaks WHIP, and
# Janus 1.1.2 has no WHIP endpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${BENCH_OUT:-target/bench/quality}"
profiles="${PROFILES:-rural-adsl,4g-doctor,severe}"
mkdir -p "$out"
cargo build --release -p cabine-server --bin cabine
cargo build --release -p cabine-kiosk --bin cabine-kiosk
cargo build --release -p cabine-loadgen --bin cabine-loadgen
echo "==> $(date -u +%FT%TZ) load: $(cut -d' ' -f1-3 /proc/loadavg); $(git rev-parse --short HEAD)"
target/release/cabine-loadgen quality --profile "$profiles" --target cabine \
  --warmup "${WARMUP:-15}" --duration "${DURATION:-60}" \
  --jitter-buffer-ms "${JITTER_BUFFER_MS:-80}" --out "$out" | tee "$out/quality.txt"
echo "==> $(date -u +%FT%TZ) load: $(cut -d' ' -f1-3 /proc/loadavg)"
