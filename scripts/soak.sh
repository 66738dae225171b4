#!/usr/bin/env bash
# The soak: one coiommud for a long time, VM sessions coming and going on it (coiommu-load
# --connect --reconnect: mix workload with balloon inflations, the daemon's LRU unpinner), and a
# kill -9 of the daemon at a fixed interval, each followed by a new daemon on the same socket that
# every running session resumes. The daemon's RSS and open fds are sampled at a fixed interval;
# the end checks every session's own checks (invariant, record vs container at each loss, counts,
# teardown), that the daemon's RSS and fd count have no upward slope within a daemon's lifetime,
# and that once the last session has closed the daemon pins nothing and holds no DMA mapping.
#
# usage: scripts/soak.sh [--duration 1h] [--kill-every 5m] [--sample-every 10s] [--vms 2]
#                        [--session 30s] [--build DIR] [--out DIR] [--metrics-port 19464]
#                        [--max-rss-slope KIB_PER_MIN] [--max-fd-slope FDS_PER_MIN]
#   durations take s, m or h (a bare number is seconds)
#   --build   a configured build tree with coiommud and coiommu-load (default build/release,
#             configured and built with the release preset when missing)
#   --out     where samples.csv, summary.json, each session's report and the daemons' logs go
#             (default build/soak/<timestamp>)
#   the slope limits (default 256 KiB/min, 1 fd/min) are judged per daemon lifetime after its
#   warm-up, so they mean something for lifetimes of minutes (the 1 h run); short smoke runs
#   pass large limits
# exit: 0 when every check passed, 1 otherwise (the summary names what failed), 2 for bad usage.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds() {  # "90", "90s", "5m", "1h" -> seconds
  local v=$1
  case "$v" in
    *h) echo $(( ${v%h} * 3600 )) ;;
    *m) echo $(( ${v%m} * 60 )) ;;
    *s) echo "${v%s}" ;;
    *) echo "$v" ;;
  esac
}
usage() { sed -n '2,22p' "$0"; }

DURATION=3600 KILL_EVERY=300 SAMPLE_EVERY=10 VMS=2 SESSION=30
BUILD=build/release OUT="" PORT=19464 MAX_RSS_SLOPE=256 MAX_FD_SLOPE=1
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) DURATION=$(seconds "$2"); shift 2 ;;
    --kill-every) KILL_EVERY=$(seconds "$2"); shift 2 ;;
    --sample-every) SAMPLE_EVERY=$(seconds "$2"); shift 2 ;;
    --vms) VMS=$2; shift 2 ;;
    --session) SESSION=$(seconds "$2"); shift 2 ;;
    --build) BUILD=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --metrics-port) PORT=$2; shift 2 ;;
    --max-rss-slope) MAX_RSS_SLOPE=$2; shift 2 ;;
    --max-fd-slope) MAX_FD_SLOPE=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "soak.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
for n in "$DURATION" "$KILL_EVERY" "$SAMPLE_EVERY" "$VMS" "$SESSION"; do
  [[ "$n" =~ ^[0-9]+$ && "$n" -gt 0 ]] || { echo "soak.sh: '$n' is not a positive whole number of seconds/VMs" >&2; exit 2; }
done

if [ ! -x "$BUILD/engine/daemon/coiommud" ] || [ ! -x "$BUILD/engine/loadgen/coiommu-load" ]; then
  if [ "$BUILD" = build/release ]; then cmake --preset release >/dev/null; fi
  cmake --build "$BUILD" --target coiommud coiommu-load >/dev/null
fi
DAEMON=$BUILD/engine/daemon/coiommud
LOAD=$BUILD/engine/loadgen/coiommu-load
OUT=${OUT:-build/soak/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT/sessions"
OUT=$(cd "$OUT" && pwd)
SOCK=$(mktemp -d /tmp/coiommu-soak.XXXXXX)/coiommud.sock
END=$(( $(date +%s) + DURATION ))
echo "soak: ${DURATION}s, kill -9 every ${KILL_EVERY}s, ${VMS} VMs of ${SESSION}s sessions, samples every ${SAMPLE_EVERY}s -> $OUT"

daemon_pid=""
kills=0
start_daemon() {
  rm -f "$SOCK"
  "$DAEMON" --socket "$SOCK" --backends fake --tracing off --log-level warn \
    --metrics-address "127.0.0.1:$PORT" --engine unpin_policy=lru,unpin_interval=1s \
    >>"$OUT/coiommud.log" 2>&1 &
  daemon_pid=$!
  echo "$daemon_pid" >"$OUT/daemon.pid"
  for _ in $(seq 100); do [ -S "$SOCK" ] && return 0; sleep 0.05; done
  echo "soak: coiommud did not come up (see $OUT/coiommud.log)" >&2
  return 1
}
cleanup() {
  kill $(jobs -p) 2>/dev/null || true
  if [ -n "$daemon_pid" ]; then
    kill -9 "$daemon_pid" 2>/dev/null || true
    wait "$daemon_pid" 2>/dev/null || true
  fi
  rm -rf "$(dirname "$SOCK")"
}
trap cleanup EXIT
start_daemon

# Sessions: each VM runs back-to-back coiommu-load sessions until the end, then stops.
session_loop() {
  local vm=$1 n=0
  while [ "$(date +%s)" -lt "$END" ]; do
    n=$((n + 1))
    local left=$(( END - $(date +%s) ))
    local len=$(( left < SESSION ? (left > 1 ? left : 1) : SESSION ))
    local name="$OUT/sessions/vm${vm}-$(printf %04d $n)"
    if "$LOAD" --connect "$SOCK" --reconnect --workload mix --vcpus 2 --ram 256M --duration "$len" \
        --balloon-interval 200ms --seed "$vm$n" --quiet --json "$name.json" >"$name.out" 2>"$name.err"; then
      echo "vm$vm session $n ok" >>"$OUT/sessions.log"
    else
      echo "vm$vm session $n FAILED (exit $?): $name.err" >>"$OUT/sessions.log"
    fi
    sleep 0.$((RANDOM % 9 + 1))  # a gap between sessions: sessions come and go
  done
}
loops=()
for vm in $(seq "$VMS"); do session_loop "$vm" & loops+=($!); done

echo "t_s,pid,rss_kib,fds,pinned_pages,dma_mappings" >"$OUT/samples.csv"
metric_sum() {  # the sum of a gauge over every VM (0 without VMs), NA when nobody answers
  local page
  if ! page=$(curl -sf --max-time 2 "http://127.0.0.1:$PORT/metrics"); then echo NA; return; fi
  awk -v m="$1" '$1 ~ "^"m"({|$)" { s += $2 } END { printf "%d\n", s }' <<<"$page"
}
sample() {
  local pid=$daemon_pid
  local rss fds
  rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status" 2>/dev/null || echo "")
  fds=$(ls "/proc/$pid/fd" 2>/dev/null | wc -l)
  [ -n "$rss" ] || return 0
  echo "$(( $(date +%s) - START )),$pid,$rss,$fds,$(metric_sum coiommu_pinned_pages),$(metric_sum coiommu_dma_mappings)" >>"$OUT/samples.csv"
}
START=$(date +%s)
next_kill=$(( START + KILL_EVERY ))
while [ "$(date +%s)" -lt "$END" ]; do
  sleep "$SAMPLE_EVERY"
  sample
  if [ "$(date +%s)" -ge "$next_kill" ] && [ "$(date +%s)" -lt "$END" ]; then
    kill -9 "$daemon_pid"
    wait "$daemon_pid" 2>/dev/null || true
    kills=$((kills + 1))
    echo "$(( $(date +%s) - START )) kill -9 #$kills (pid $daemon_pid)" >>"$OUT/kills.log"
    start_daemon
    next_kill=$(( next_kill + KILL_EVERY ))
  fi
done
# The sessions end on their own (the last one is shorter); the daemon outlives them.
wait "${loops[@]}" 2>/dev/null || true
sleep 1
sample
pinned_end=$(metric_sum coiommu_pinned_pages)
mappings_end=$(metric_sum coiommu_dma_mappings)
kill -TERM "$daemon_pid" 2>/dev/null || echo "soak: the last coiommud was not running at the end" >&2
daemon_exit=0
wait "$daemon_pid" 2>/dev/null || daemon_exit=$?
daemon_pid=""
[ "$daemon_exit" = 0 ] || echo "soak: the last coiommud exited $daemon_exit on SIGTERM" >&2

python3 - "$OUT" "$kills" "$pinned_end" "$mappings_end" "$MAX_RSS_SLOPE" "$MAX_FD_SLOPE" "$daemon_exit" <<'EOF'
import csv, glob, json, os, sys
out, kills, daemon_exit = sys.argv[1], int(sys.argv[2]), int(sys.argv[7])
num = lambda v: int(v) if v.lstrip("-").isdigit() else None  # NA: the metrics did not answer
pinned_end, mappings_end = num(sys.argv[3]), num(sys.argv[4])
max_rss, max_fd = float(sys.argv[5]), float(sys.argv[6])

def slope(points):  # least squares, per minute
    n = len(points)
    if n < 3: return None
    mx = sum(p[0] for p in points) / n; my = sum(p[1] for p in points) / n
    sxx = sum((p[0] - mx) ** 2 for p in points)
    return None if sxx == 0 else 60.0 * sum((p[0] - mx) * (p[1] - my) for p in points) / sxx

rows = list(csv.DictReader(open(os.path.join(out, "samples.csv"))))
lives = {}
for r in rows: lives.setdefault(r["pid"], []).append(r)
rss_slopes, fd_slopes = [], []
for pid, rs in lives.items():
    rs = rs[2:]  # the first samples of a daemon are its warm-up (sessions resuming)
    s = slope([(int(r["t_s"]), int(r["rss_kib"])) for r in rs])
    f = slope([(int(r["t_s"]), int(r["fds"])) for r in rs])
    if s is not None: rss_slopes.append(s)
    if f is not None: fd_slopes.append(f)
def median(v): v = sorted(v); return v[len(v) // 2] if v else 0.0

sessions = failed = resumes = audits = inconsistent = 0
problems = []
for path in sorted(glob.glob(os.path.join(out, "sessions", "*.json"))):
    try: doc = json.load(open(path))
    except Exception as e:
        problems.append(f"{os.path.basename(path)}: no report ({e})"); failed += 1; continue
    for run in doc.get("runs", []):
        sessions += 1
        r = run.get("resumes", {})
        resumes += int(r.get("sessions_resumed", 0)); audits += int(r.get("audits", 0))
        inconsistent += int(r.get("audits_inconsistent", 0))
        bad = [c["name"] for c in run["checks"] if not c["passed"]]
        if bad:
            failed += 1; problems.append(f"{os.path.basename(path)}: {', '.join(bad)}")
reports = len(glob.glob(os.path.join(out, "sessions", "*.err")))
missing = reports - len(glob.glob(os.path.join(out, "sessions", "*.json")))
if missing > 0: failed += missing; problems.append(f"{missing} sessions wrote no report")

checks = {
    "every_session_passed": failed == 0 and sessions > 0,
    "record_matched_container_at_every_loss": inconsistent == 0,
    "rss_slope_flat": abs(median(rss_slopes)) <= max_rss,
    "fd_slope_flat": abs(median(fd_slopes)) <= max_fd,
    "pinned_equals_mapped_equals_zero_at_end": pinned_end == 0 and mappings_end == 0,
    "daemon_stopped_cleanly": daemon_exit == 0,
}
summary = {
    "samples": len(rows), "daemon_lifetimes": len(lives), "kills": kills,
    "sessions": sessions, "sessions_failed": failed, "resumes": resumes, "audits": audits,
    "audits_inconsistent": inconsistent,
    "rss_kib_per_min": {"median": median(rss_slopes), "max": max(rss_slopes, default=0.0), "limit": max_rss},
    "fds_per_min": {"median": median(fd_slopes), "max": max(fd_slopes, default=0.0), "limit": max_fd},
    "rss_kib": {"first": int(rows[0]["rss_kib"]) if rows else 0, "last": int(rows[-1]["rss_kib"]) if rows else 0},
    "fds": {"first": int(rows[0]["fds"]) if rows else 0, "last": int(rows[-1]["fds"]) if rows else 0},
    "pinned_pages_at_end": pinned_end, "dma_mappings_at_end": mappings_end,
    "checks": checks, "problems": problems[:20],
}
json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=2)
print(f"soak: {len(rows)} samples over {len(lives)} daemon lifetimes, {kills} kill -9, {sessions} sessions "
      f"({failed} failed), {resumes} resumes, {audits} audits ({inconsistent} inconsistent)")
print(f"soak: RSS slope median {median(rss_slopes):+.1f} KiB/min (max {max(rss_slopes, default=0.0):+.1f}), "
      f"fd slope median {median(fd_slopes):+.2f}/min; at the end {pinned_end} pinned pages, {mappings_end} DMA mappings")
for name, ok in checks.items(): print(f"soak: {'ok  ' if ok else 'FAIL'} {name}")
for p in problems[:20]: print(f"soak:   {p}")
sys.exit(0 if all(checks.values()) else 1)
EOF
