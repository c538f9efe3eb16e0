#!/usr/bin/env bash
# Time to first frame in Chromium (issue 9: "Chromium's reported"): Debian's chromium publishes
# from /demo/publish over WHIP, a second page opens /demo/watch, offers over WHEP and plays; the
# figure is from the watch page's navigation to its first decoded video frame (statistics polled
# every 20 ms), through the release server on loopback with its built-in configuration.
#
#   benches/chromium_first_frame.sh [RUNS]      # default 5 runs; prints one line per run and p50
#
# Needs target/release/cabine (scripts/bench builds it), chromium, node and
# `npm ci --prefix tests/browser`.
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-5}"
bin=target/release/cabine
[ -x "$bin" ] || cargo build --release -p cabine-server --bin cabine
export CABINE_HTTP__LISTEN=127.0.0.1:18080 CABINE_MEDIA__BIND=127.0.0.1:17882 \
  CABINE_TELEMETRY__LISTEN=127.0.0.1:14443 CABINE_ADMIN__LISTEN="" CABINE_LOG__FILTER=warn
"$bin" serve >/tmp/cabine-first-frame.log 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -fsS http://127.0.0.1:18080/healthz >/dev/null 2>&1 && break; sleep 0.1; done
out=()
for i in $(seq "$runs"); do
  room="first-frame-$i"
  # Minted first: CABINE_URL below is the driver's, and `cabine` reads every CABINE_* variable.
  pub_token=$("$bin" token --room "$room" --role kiosk --identity "kiosk-$i" --ttl 10m)
  watch_token=$("$bin" token --room "$room" --role doctor --identity "dr-$i" --ttl 10m)
  line=$(CABINE_URL=http://127.0.0.1:18080 ROOM="$room" POLL_MS=20 HOLD_MS=0 \
    PUBLISH_TOKEN="$pub_token" WATCH_TOKEN="$watch_token" \
    SCREENSHOT=/tmp/first-frame.png node tests/browser/whip_whep.mjs 2>/dev/null)
  ms=$(printf '%s' "$line" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["timings_ms"]["first_frame"] if d["ok"] else "failed")')
  echo "run $i: first frame ${ms} ms"
  out+=("$ms")
done
printf '%s\n' "${out[@]}" | grep -v failed | sort -n | awk '{a[NR]=$1} END {if (NR) print "p50 " a[int((NR+1)/2)] " ms over " NR " runs"}'
