#!/usr/bin/env bash
# ctest exporter.prometheus_live: starts the synthetic exporter on an ephemeral loopback port and
# runs scripts/prometheus-live.sh against it with the given queries file. Exit 77 = skipped.
#
# usage: prometheus_live_test.sh SYNTHETIC_EXPORTER_BINARY QUERIES_FILE
set -euo pipefail
EXPORTER_BIN=${1:?exporter binary}
QUERIES=${2:?queries file}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../../.." && pwd)

OUT=$(mktemp /tmp/coiommu-synthetic-exporter.XXXXXX)
EXPORTER_PID=""
cleanup() {
  local rc=$?
  if [ -n "$EXPORTER_PID" ]; then
    kill "$EXPORTER_PID" 2>/dev/null || true
    wait "$EXPORTER_PID" 2>/dev/null || true
  fi
  rm -f "$OUT"
  exit $rc
}
trap cleanup EXIT

"$EXPORTER_BIN" --address 127.0.0.1:0 --duration 600 >"$OUT" 2>&1 &
EXPORTER_PID=$!
ADDR=""
for _ in $(seq 100); do
  ADDR=$(sed -n 's/^listening //p' "$OUT" | head -n 1)
  [ -n "$ADDR" ] && break
  kill -0 "$EXPORTER_PID" 2>/dev/null || { cat "$OUT" >&2; exit 1; }
  sleep 0.1
done
[ -n "$ADDR" ] || { echo "synthetic exporter did not report its address" >&2; cat "$OUT" >&2; exit 1; }
echo "synthetic exporter on $ADDR"
"$ROOT/scripts/prometheus-live.sh" --min-scrapes 5 --var "vm=.+" "$ADDR" "$QUERIES"
