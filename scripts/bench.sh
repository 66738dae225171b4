#!/usr/bin/env bash
# The standard load matrix of coiommu-load, in one invocation (same seed for every cell):
#   engines    fast, seed            (the coiommu strategy's pin engine)
#   strategies coiommu, strict, static
#   workloads  stream, ring, random
# and the comparison table with ratios to the seed engine (pages/s and peak pinned memory). Its
# output is what the notes and the README quote, so it prints the machine and commit first.
#
# usage: scripts/bench.sh [--duration S] [--backend fake|null] [--json FILE] [--plot FILE.png]
#                         [-- any other coiommu-load flags]
#        scripts/bench.sh table [--rounds N] [--conditions idle,busy] [--json FILE] [--figures ...]
#                         the engine's performance table (scripts/perf.py: interleaved rounds of
#                         separate processes, idle and busy, a JSON record of the run)
#        scripts/bench.sh compare OLD.json NEW.json     two such records, figure by figure
# env:   BUILD_DIR (default build/release: the release preset), JOBS (build jobs, default nproc)
#
# Builds coiommu-load with the release preset first (incremental: a no-op when up to date).
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  table) shift; exec python3 scripts/perf.py run "$@" ;;
  compare) shift; exec python3 scripts/perf.py compare "$@" ;;
esac

DURATION=2
BACKEND=fake
JSON=""
PLOT=""
EXTRA=()
usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) DURATION=${2:?--duration needs a value}; shift 2 ;;
    --backend) BACKEND=${2:?--backend needs a value}; shift 2 ;;
    --json) JSON=${2:?--json needs a file}; shift 2 ;;
    --plot) PLOT=${2:?--plot needs a file}; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) echo "bench.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done

BUILD_DIR=${BUILD_DIR:-build/release}
JOBS=${JOBS:-$(nproc)}
if [ "$BUILD_DIR" = build/release ]; then
  [ -f build/release/CMakeCache.txt ] || cmake --preset release >/dev/null
else
  [ -f "$BUILD_DIR/CMakeCache.txt" ] || \
    cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCOIOMMU_TESTS=OFF >/dev/null
fi
cmake --build "$BUILD_DIR" --target coiommu-load -j "$JOBS" >/dev/null
BIN="$BUILD_DIR/engine/loadgen/coiommu-load"

ARGS=(--engine fast,seed --strategy coiommu,strict,static --workload stream,ring,random
      --duration "$DURATION" --backend "$BACKEND" --log-level off --table)
[ -n "$JSON" ] && ARGS+=(--json "$JSON")
[ -n "$PLOT" ] && ARGS+=(--plot "$PLOT")

echo "coiommu-load standard matrix: ${DURATION}s per cell, backend $BACKEND"
echo "machine: $(nproc) CPUs, $(uname -sr), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
echo "commit:  $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (+ local changes)')"
echo "command: $BIN ${ARGS[*]} ${EXTRA[*]:-}"
echo
exec "$BIN" "${ARGS[@]}" "${EXTRA[@]}"
