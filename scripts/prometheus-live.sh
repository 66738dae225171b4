#!/usr/bin/env bash
# Live-Prometheus check: starts Debian's `prometheus` on loopback with temporary storage and a
# generated config that scrapes one exporter every second, waits until it has scraped it enough
# times, then runs every query of a file with `promtool query instant -o json` and fails on any
# query that errors or returns an empty result (promtool itself exits 0 on empty results).
#
# usage: scripts/prometheus-live.sh [options] EXPORTER_ADDR QUERIES_FILE
#   EXPORTER_ADDR   host:port serving the metrics (e.g. 127.0.0.1:9464)
#   QUERIES_FILE    one PromQL expression per line; blank lines and lines starting with '#' are
#                   skipped. Grafana variables are substituted before querying (see --var):
#                   $__rate_interval=10s $__interval=2s $__range=1m $job=.+ $instance=.+
#                   (both $name and ${name} forms).
# options:
#   --min-scrapes N   scrapes of the target to wait for before querying (default 5)
#   --timeout S       bound on the wait for Prometheus and the scrapes (default 60)
#   --metrics-path P  path to scrape (default /metrics)
#   --job NAME        job label of the target (default coiommu)
#   --rule-file F     load a recording/alerting rule file (repeatable; evaluated every 1 s)
#   --var NAME=VALUE  add or override a query variable substitution (repeatable)
#   --allow-nan       accept results whose every value is NaN (default: a failure, since a
#                     histogram_quantile over no traffic is NaN)
#   --wait S          extra seconds to let data accumulate after the scrapes (default 0)
#   --keep            keep the temporary directory (config, data, prometheus.log)
# env: PROMETHEUS, PROMTOOL (binaries; default from PATH)
# exit: 0 every query returned data; 1 a query failed or came back empty, or Prometheus never
#       scraped the target; 2 usage error; 77 prometheus or promtool is not installed (skip).
set -euo pipefail

PROMETHEUS=${PROMETHEUS:-prometheus}
PROMTOOL=${PROMTOOL:-promtool}
MIN_SCRAPES=5
TIMEOUT=60
METRICS_PATH=/metrics
JOB=coiommu
ALLOW_NAN=0
EXTRA_WAIT=0
KEEP=0
RULE_FILES=()
VARS=("__rate_interval=10s" "__interval=2s" "__range=1m" "job=.+" "instance=.+")

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
die() { echo "prometheus-live: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --min-scrapes) MIN_SCRAPES=${2:?}; shift 2 ;;
    --timeout) TIMEOUT=${2:?}; shift 2 ;;
    --metrics-path) METRICS_PATH=${2:?}; shift 2 ;;
    --job) JOB=${2:?}; shift 2 ;;
    --rule-file) RULE_FILES+=("$(realpath "${2:?}")"); shift 2 ;;
    --var) VARS+=("${2:?}"); shift 2 ;;
    --allow-nan) ALLOW_NAN=1; shift ;;
    --wait) EXTRA_WAIT=${2:?}; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h|--help) usage ;;
    --) shift; break ;;
    -*) echo "unknown option $1" >&2; usage ;;
    *) break ;;
  esac
done
[ $# -eq 2 ] || usage
TARGET=$1
QUERIES=$2
[ -r "$QUERIES" ] || die "cannot read queries file $QUERIES"
case "$TARGET" in *:*) ;; *) die "exporter address must be host:port, got '$TARGET'" ;; esac

for tool in "$PROMETHEUS" "$PROMTOOL" python3; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "prometheus-live: SKIP: $tool not found (apt install prometheus python3)" >&2
    exit 77
  fi
done

WORK=$(mktemp -d /tmp/coiommu-prometheus-live.XXXXXX)
PROM_PID=""
cleanup() {
  local rc=$?
  if [ $rc -ne 0 ] && [ -s "$WORK/prometheus.log" ]; then
    echo "--- last lines of $WORK/prometheus.log:" >&2
    tail -n 20 "$WORK/prometheus.log" >&2
  fi
  if [ -n "$PROM_PID" ] && kill -0 "$PROM_PID" 2>/dev/null; then
    kill "$PROM_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$PROM_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$PROM_PID" 2>/dev/null || true
    wait "$PROM_PID" 2>/dev/null || true
  fi
  if [ "$KEEP" = 1 ]; then echo "prometheus-live: kept $WORK" >&2; else rm -rf "$WORK"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A free loopback port for Prometheus's own web listener (bind to 0, read it back, release).
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

{
  echo "global:"
  echo "  scrape_interval: 1s"
  echo "  scrape_timeout: 1s"
  echo "  evaluation_interval: 1s"
  if [ ${#RULE_FILES[@]} -gt 0 ]; then
    echo "rule_files:"
    for f in "${RULE_FILES[@]}"; do echo "  - \"$f\""; done
  fi
  echo "scrape_configs:"
  echo "  - job_name: \"$JOB\""
  echo "    metrics_path: \"$METRICS_PATH\""
  echo "    static_configs:"
  echo "      - targets: [\"$TARGET\"]"
} > "$WORK/prometheus.yml"

PORT=""
for attempt in 1 2 3; do
  PORT=$(free_port)
  "$PROMETHEUS" --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/data" \
    --web.listen-address="127.0.0.1:$PORT" --log.level=warn >"$WORK/prometheus.log" 2>&1 &
  PROM_PID=$!
  ready=0
  for _ in $(seq $((TIMEOUT * 5))); do
    kill -0 "$PROM_PID" 2>/dev/null || break
    if python3 - "$PORT" <<'EOF' 2>/dev/null; then ready=1; break; fi
import sys, urllib.request
urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/-/ready", timeout=1).read()
EOF
    sleep 0.2
  done
  [ "$ready" = 1 ] && break
  kill "$PROM_PID" 2>/dev/null || true; wait "$PROM_PID" 2>/dev/null || true; PROM_PID=""
  echo "prometheus-live: prometheus did not become ready on port $PORT (attempt $attempt)" >&2
done
[ -n "$PROM_PID" ] || die "prometheus failed to start; see the log above"
URL="http://127.0.0.1:$PORT"
echo "prometheus-live: prometheus $URL scraping http://$TARGET$METRICS_PATH every 1s (job $JOB)"

# The JSON checker: reads promtool's -o json output on stdin; prints "<n> series" or a reason.
CHECK_PY='
import json, math, sys
allow_nan = sys.argv[1] == "1"
text = sys.stdin.read().strip()
try:
    data = json.loads(text) if text else None
except ValueError as e:
    print(f"unparseable output: {text[:200]}"); sys.exit(1)
if isinstance(data, dict) and "resultType" in data:  # scalar/string results
    data = data.get("result")
if data is None or data == [] or data == {}:
    print("EMPTY result"); sys.exit(1)
if isinstance(data, list) and data and isinstance(data[0], dict):
    values = []
    for s in data:
        v = s.get("value") or (s.get("values") or [[0, "NaN"]])[-1]
        values.append(float(v[1]))
    if not allow_nan and all(math.isnan(v) for v in values):
        print(f"all {len(values)} series are NaN (no traffic in the window?)"); sys.exit(1)
    print(f"{len(data)} series"); sys.exit(0)
print("1 value"); sys.exit(0)
'

query_json() { "$PROMTOOL" query instant -o json "$URL" "$1" 2>&1; }

# Wait for the scrapes.
deadline=$((SECONDS + TIMEOUT))
scrapes=0
while :; do
  out=$(query_json "count_over_time(up{job=\"$JOB\"}[10m])") || true
  scrapes=$(printf '%s' "$out" | python3 -c 'import json,sys
try:
    d=json.load(sys.stdin); print(int(float(d[0]["value"][1])) if d else 0)
except Exception:
    print(0)')
  up=$(query_json "up{job=\"$JOB\"}" | python3 -c 'import json,sys
try:
    d=json.load(sys.stdin); print(int(float(d[0]["value"][1])) if d else 0)
except Exception:
    print(0)')
  if [ "$scrapes" -ge "$MIN_SCRAPES" ] && [ "$up" = 1 ]; then break; fi
  if [ $SECONDS -ge $deadline ]; then
    die "target $TARGET: only $scrapes scrapes (up=$up) after ${TIMEOUT}s; is the exporter running?"
  fi
  sleep 1
done
echo "prometheus-live: $scrapes scrapes of $TARGET, up=1"
[ "$EXTRA_WAIT" -gt 0 ] && sleep "$EXTRA_WAIT"

# Substitute the Grafana variables, then run each query.
subst() {
  python3 - "$1" "${VARS[@]}" <<'EOF'
import re, sys
expr, pairs = sys.argv[1], sys.argv[2:]
values = {}
for p in pairs:
    name, _, value = p.partition("=")
    values[name] = value
# Longest names first so $__rate_interval is not read as $__rate...; both $x and ${x} forms.
for name in sorted(values, key=len, reverse=True):
    expr = expr.replace("${" + name + "}", values[name])
    expr = re.sub(r"\$" + re.escape(name) + r"(?![A-Za-z0-9_])", lambda m: values[name], expr)
print(expr)
EOF
}

total=0
failed=0
while IFS= read -r line || [ -n "$line" ]; do
  expr=$(printf '%s' "$line" | sed 's/^[[:space:]]*//; s/[[:space:]]*$//')
  case "$expr" in ''|'#'*) continue ;; esac
  total=$((total + 1))
  q=$(subst "$expr")
  if ! out=$(query_json "$q"); then
    failed=$((failed + 1))
    printf 'FAIL  %s\n      promtool: %s\n' "$q" "$(printf '%s' "$out" | head -n 3)"
    continue
  fi
  if verdict=$(printf '%s' "$out" | python3 -c "$CHECK_PY" "$ALLOW_NAN"); then
    printf 'ok    %-12s %s\n' "($verdict)" "$q"
  else
    failed=$((failed + 1))
    printf 'FAIL  %s\n      %s\n' "$q" "$verdict"
  fi
done < "$QUERIES"

[ "$total" -gt 0 ] || die "no queries in $QUERIES"
echo "prometheus-live: $((total - failed))/$total queries returned data"
[ "$failed" -eq 0 ]
