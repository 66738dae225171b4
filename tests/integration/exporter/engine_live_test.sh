#!/usr/bin/env bash
# ctest exporter.engine_live: the real engine under load (coiommu-engine-load-exporter, with the BPF
# tracer when this process may load BPF) scraped by a real Prometheus every second with
# dashboards/prometheus/rules.yml loaded; every panel query of both dashboards (extracted and listed
# by tests/unit/dashboards/check_dashboards.py, Grafana variables substituted by
# scripts/prometheus-live.sh, $vm as ".+") and every recording rule must return a non-empty, non-NaN
# result.
# No query needs --allow-nan: the fixture drives every op, kind and program the panels split by.
# Without BPF the kernel-view dashboard and the BPF rules are left out, and the log says so.
#
# usage: engine_live_test.sh FIXTURE_BINARY        exit: 0 ok, 1 failure, 77 skipped
set -euo pipefail
FIXTURE=${1:?fixture binary}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../../.." && pwd)

OUT=$(mktemp /tmp/coiommu-engine-live.XXXXXX)
ERR=$(mktemp /tmp/coiommu-engine-live-err.XXXXXX)
QUERIES=$(mktemp /tmp/coiommu-engine-live-queries.XXXXXX)
FIXTURE_PID=""
cleanup() {
  local rc=$?
  if [ -n "$FIXTURE_PID" ]; then
    kill "$FIXTURE_PID" 2>/dev/null || true
    wait "$FIXTURE_PID" 2>/dev/null || true
  fi
  if [ $rc -ne 0 ] && [ $rc -ne 77 ]; then
    echo "--- fixture stdout:" >&2; cat "$OUT" >&2
    echo "--- fixture stderr (last lines):" >&2; tail -n 20 "$ERR" >&2
  fi
  rm -f "$OUT" "$ERR" "$QUERIES"
  exit $rc
}
trap cleanup EXIT

command -v python3 >/dev/null 2>&1 || { echo "SKIP: python3 not found"; exit 77; }

"$FIXTURE" --address 127.0.0.1:0 --duration 300 >"$OUT" 2>"$ERR" &
FIXTURE_PID=$!
ADDR=""
BPF=""
for _ in $(seq 150); do
  ADDR=$(sed -n 's/^listening //p' "$OUT" | head -n 1)
  BPF=$(sed -n 's/^bpf //p' "$OUT" | head -n 1)
  [ -n "$ADDR" ] && [ -n "$BPF" ] && break
  kill -0 "$FIXTURE_PID" 2>/dev/null || { echo "fixture exited early" >&2; exit 1; }
  sleep 0.1
done
[ -n "$ADDR" ] || { echo "fixture did not report its address" >&2; exit 1; }
echo "engine load exporter on $ADDR (bpf $BPF)"

SKIP_BPF=()
if [ "$BPF" != "attached" ]; then
  echo "NOTE: BPF tracer not attached ($BPF): the kernel-view dashboard and BPF rules are not queried"
  SKIP_BPF=(--skip-bpf)
fi
python3 "$ROOT/tests/unit/dashboards/check_dashboards.py" --root "$ROOT" queries "${SKIP_BPF[@]}" >"$QUERIES"
echo "$(grep -cv '^#' "$QUERIES") queries"

"$ROOT/scripts/prometheus-live.sh" --min-scrapes 5 --timeout 60 --var "vm=.+" \
  --rule-file "$ROOT/dashboards/prometheus/rules.yml" "$ADDR" "$QUERIES"
