#!/usr/bin/env bash
# The run command: installs what is missing, builds the three programs, and runs the appliance
# demo (`coiommud --demo`: an emulated VM served over the daemon's real socket, metrics on
# http://127.0.0.1:9464/metrics, BPF tracing when run as root, a status line every second).
#
# usage: ./scripts/run.sh [coiommud flags...]     e.g. ./scripts/run.sh --duration 0   (until Ctrl-C)
#                                                      ./scripts/run.sh --duration 5 --vcpus 2
# env:   COIOMMU_PRESET     CMake preset to build (default: release)
#        COIOMMU_BUILD_DIR  an already configured build tree to build and use instead of a preset
#        JOBS               parallel build jobs (default: number of cores)
#        COIOMMU_SKIP_DEPS  set to 1 to skip scripts/deps.sh (packages known to be present)
#
# A build failure stops here with the compiler's own message: the demo's next steps name all
# three programs, so a demo without one of them would point at something that does not exist.
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=${JOBS:-$(nproc)}
PRESET=${COIOMMU_PRESET:-release}

if [ "${COIOMMU_SKIP_DEPS:-0}" != 1 ]; then
  ./scripts/deps.sh
fi

if [ -n "${COIOMMU_BUILD_DIR:-}" ]; then
  BUILD=$COIOMMU_BUILD_DIR
  cmake -S . -B "$BUILD" >/dev/null
else
  BUILD=build/$PRESET
  cmake --preset "$PRESET" >/dev/null
fi

echo "run: building coiommud, coiommu-trace and coiommu-load in $BUILD"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! cmake --build "$BUILD" -j "$JOBS" --target coiommud coiommu-trace coiommu-load >"$log" 2>&1; then
  cat "$log" >&2
  echo "run: the build failed (the compiler's message is above)" >&2
  exit 1
fi
rm -f "$log"
trap - EXIT

exec "$BUILD/engine/daemon/coiommud" --demo "$@"
