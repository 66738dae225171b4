#!/usr/bin/env bash
# The bpftool investigation path for coiommu's BPF programs (vfio_dma, engine, vfio_kern).
#
# usage: scripts/bpf-latency.sh [--pin-root DIR] [--unit ns|us|ms] [--json] COMMAND [ARGS]
#   list                 our programs (bpftool prog show), their links and perf attachments
#   stats [SECONDS]      turn on kernel.bpf_stats_enabled for SECONDS (default 5), then print
#                        run count, run time and ns per run of each of our programs; the sysctl
#                        is restored afterwards
#   dump [MAP...]        `bpftool -j map dump pinned <pin-root>/v2/<map>` of the pinned maps
#                        (default: every pinned coiommu map) rendered as text histograms and
#                        counter tables; per-CPU values are summed. --json prints the summed
#                        values as one JSON object instead.
#   all                  list + dump
#
# Pinned maps exist while `coiommu-trace --pin-temp` runs, or after `coiommu-trace --pin` exits.
# Needs root (bpftool reads programs and maps; sysctl for stats). bpftool: /usr/sbin/bpftool.
set -euo pipefail

PIN_ROOT=/sys/fs/bpf/coiommu
UNIT=ns
JSON=0
BPFTOOL=${BPFTOOL:-$(command -v bpftool || echo /usr/sbin/bpftool)}
PROG_RE='^(vfio_dma_|eng_|vk_)'

usage() { sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "bpf-latency: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --pin-root) PIN_ROOT=$2; shift 2 ;;
    --unit) UNIT=$2; shift 2 ;;
    --json) JSON=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) break ;;
  esac
done
[ $# -ge 1 ] || { usage; exit 2; }
CMD=$1; shift
case "$UNIT" in ns|us|ms) ;; *) die "unit must be ns, us or ms" ;; esac
[ -x "$BPFTOOL" ] || die "bpftool not found (apt-get install bpftool; it lives in /usr/sbin)"
[ "$(id -u)" = 0 ] || die "needs root (bpftool reads BPF programs and maps)"
PIN_DIR=$PIN_ROOT/v2

our_prog_ids() {
  python3 - "$PROG_RE" "$("$BPFTOOL" -j prog show)" <<'PY'
import json, re, sys
for p in json.loads(sys.argv[2] or "[]"):
    if re.match(sys.argv[1], p.get("name", "")):
        print(p["id"])
PY
}

cmd_list() {
  local ids
  ids=$(our_prog_ids)
  if [ -z "$ids" ]; then
    echo "no coiommu BPF programs loaded (start coiommu-trace or the exporter)"
    return 0
  fi
  echo "== programs"
  for id in $ids; do "$BPFTOOL" prog show id "$id"; done
  echo "== links"
  python3 - "$ids" "$("$BPFTOOL" -j link show)" <<'PY'
import json, sys
ids = {int(i) for i in sys.argv[1].split()}
for l in json.loads(sys.argv[2] or "[]"):
    if l.get("prog_id") in ids:
        extra = " ".join(f"{k}={v}" for k, v in l.items() if k not in ("id", "type", "prog_id"))
        print(f"link {l['id']}: {l['type']} prog {l['prog_id']} {extra}")
PY
  echo "== perf attachments (tracepoints, uprobes/USDT)"
  python3 - "$ids" "$("$BPFTOOL" -j perf show)" <<'PY'
import json, sys
ids = {int(i) for i in sys.argv[1].split()}
for p in json.loads(sys.argv[2] or "[]"):
    if p.get("prog_id") in ids:
        what = p.get("tracepoint") or p.get("filename", "") + (f" offset {p['offset']:#x}" if "offset" in p else "")
        print(f"pid {p['pid']} fd {p['fd']}: prog {p['prog_id']} {p.get('fd_type', '')} {what}")
PY
}

cmd_stats() {
  local secs=${1:-5} old
  old=$(sysctl -n kernel.bpf_stats_enabled)
  trap 'sysctl -q -w kernel.bpf_stats_enabled='"$old"' || true' EXIT
  sysctl -q -w kernel.bpf_stats_enabled=1
  local before after
  before=$("$BPFTOOL" -j prog show)
  sleep "$secs"
  after=$("$BPFTOOL" -j prog show)
  python3 - "$PROG_RE" "$secs" "$before" "$after" <<'PY'
import json, re, sys
pat, secs = sys.argv[1], float(sys.argv[2])
before = {p["id"]: p for p in json.loads(sys.argv[3])}
after = [p for p in json.loads(sys.argv[4]) if re.match(pat, p.get("name", ""))]
if not after:
    print("no coiommu BPF programs loaded"); sys.exit(0)
print(f"run time per program over {secs:g} s (kernel.bpf_stats_enabled=1)")
print(f"{'id':>6} {'program':<16} {'runs':>10} {'run_time_ns':>14} {'ns/run':>8} {'runs/s':>10}")
for p in after:
    b = before.get(p["id"], {})
    runs = p.get("run_cnt", 0) - b.get("run_cnt", 0)
    ns = p.get("run_time_ns", 0) - b.get("run_time_ns", 0)
    print(f"{p['id']:>6} {p['name']:<16} {runs:>10} {ns:>14} {ns // runs if runs else 0:>8} {runs / secs:>10.1f}")
PY
}

cmd_dump() {
  [ -d "$PIN_DIR" ] || die "nothing pinned in $PIN_DIR (run coiommu-trace --pin or --pin-temp)"
  local maps=("$@")
  if [ ${#maps[@]} -eq 0 ]; then
    for f in "$PIN_DIR"/*; do
      case "$(basename "$f")" in *_flight|*_inflight) continue ;; esac
      maps+=("$(basename "$f")")
    done
  fi
  local dumps=()
  for m in "${maps[@]}"; do
    [ -e "$PIN_DIR/$m" ] || die "no pinned map $PIN_DIR/$m"
    dumps+=("$m" "$("$BPFTOOL" -j map dump pinned "$PIN_DIR/$m")")
  done
  python3 - "$UNIT" "$JSON" "${dumps[@]}" <<'PY'
import json, sys

unit, as_json, args = sys.argv[1], sys.argv[2] == "1", sys.argv[3:]
div = {"ns": 1, "us": 1e3, "ms": 1e6}[unit]
KEYS = {
    "vfio_dma_hist": ["vfio_map_dma", "vfio_unmap_dma", "ioas_map", "ioas_unmap"],
    "vfio_dma_calls": ["vfio_map_dma", "vfio_unmap_dma", "ioas_map", "ioas_unmap"],
    "eng_req_hist": ["single", "batch"], "eng_req_pages": ["single", "batch"],
    "eng_req_calls": ["single", "batch"], "eng_dma_hist": ["map", "unmap"],
    "eng_dma_calls": ["map", "unmap"], "eng_scan_hist": ["lru", "balloon"],
    "eng_scan_stats": ["lru", "balloon"], "vk_hist": ["vfio_dma_do_map", "vfio_dma_do_unmap"],
}

def summed(entry):
    """Sum a BTF-formatted per-CPU value over CPUs (or return a plain value)."""
    f = entry.get("formatted", entry)
    if "values" not in f:
        return f["key"], f["value"]
    total = None
    for v in f["values"]:
        val = v["value"]
        if total is None:
            total = json.loads(json.dumps(val))
            continue
        for k, x in val.items():
            if isinstance(x, list):
                total[k] = [a + b for a, b in zip(total[k], x)]
            else:
                total[k] += x
    return f["key"], total

def bound(v):
    if div == 1: return str(v)
    x = v / div
    return "0" if x == 0 else f"{x:.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}" if x >= 1 else f"{x:.3f}"

def render_hist(label, h, is_pages):
    slots = h["slots"]
    nz = [i for i, c in enumerate(slots) if c]
    u = "pages" if is_pages else unit
    d = 1 if is_pages else div
    avg = (h["sum"] / h["count"] / d) if h["count"] else 0
    print(f"\n{label}: count {h['count']}, sum {h['sum']}, avg {avg:.3f} {u}")
    if not nz:
        return
    lo, hi = nz[0], nz[-1]
    mx = max(slots[lo:hi + 1])
    f = (lambda v: str(v)) if is_pages else bound
    rows = [(f(0 if k == 0 else 1 << (k - 1)), "inf" if k == len(slots) - 1 else f(1 << k), slots[k])
            for k in range(lo, hi + 1)]
    wl = max(10, max(len(r[0]) for r in rows)); wh = max(10, max(len(r[1]) for r in rows))
    print(f"{'':5}{u:<{wl + wh - 1}} : count    distribution")
    for l, h_, c in rows:
        print(f"{l:>{wl}} -> {h_:<{wh}} : {c:<8} |{'*' * (c * 40 // mx):<40}|")

out = {}
for name, text in zip(args[0::2], args[1::2]):
    entries = json.loads(text)
    names = KEYS.get(name)
    out[name] = {}
    for e in entries:
        key, val = summed(e)
        label = names[key] if names and isinstance(key, int) and key < len(names) else str(key)
        out[name][label] = val
if as_json:
    print(json.dumps(out)); sys.exit(0)
for name, vals in out.items():
    print(f"\n=== {name}")
    for label, val in vals.items():
        if isinstance(val, dict) and "slots" in val:
            if val["count"] or name.startswith("vfio_dma"):
                render_hist(f"{name}[{label}]", val, name == "eng_req_pages")
        elif isinstance(val, dict):
            print(f"{label}: " + " ".join(f"{k}={v}" for k, v in val.items()))
        else:
            print(f"{label}: {val}")
PY
}

case "$CMD" in
  list) cmd_list ;;
  stats) cmd_stats "$@" ;;
  dump) cmd_dump "$@" ;;
  all) cmd_list; cmd_dump ;;
  *) usage; exit 2 ;;
esac
