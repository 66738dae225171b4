#!/usr/bin/env bash
# The test command: installs what is missing, builds, runs the whole ctest suite, then the unit
# tests again under ASan+UBSan and the concurrency tests under TSan.
#
# usage: ./scripts/test.sh [--quick]   (--quick: dev preset only, no sanitizer passes)
# env:   JOBS (parallel build/test jobs, default: number of cores)
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=${JOBS:-$(nproc)}
QUICK=0
[ "${1:-}" = "--quick" ] && QUICK=1

step() { printf '\n=== %s (%s)\n' "$1" "$(date +%T)"; }

step "dependencies"
./scripts/deps.sh

run_preset() {
  local preset=$1
  step "configure + build: $preset"
  cmake --preset "$preset" >/dev/null
  cmake --build --preset "$preset" -j "$JOBS"
  step "ctest: $preset"
  ctest --preset "$preset" -j "$JOBS"
}

# The dev pass runs every test: unit, concurrency, integration (root: BPF, Prometheus) and the
# real-VFIO tests inside a QEMU guest (label vm).
run_preset dev
if [ "$QUICK" = 0 ]; then
  run_preset asan
  run_preset tsan
fi
step "all tests passed"
