#!/usr/bin/env bash
# The run command: installs what is missing, builds what the demo needs, and runs the appliance
# demo (`coiommud --demo`: an emulated VM served over the daemon's real socket, metrics on
# http://127.0.0.1:9464/metrics, BPF tracing when run as root, a status line every second).
#
# usage: ./scripts/run.sh [coiommud flags...]     e.g. ./scripts/run.sh --duration 0   (until Ctrl-C)
#                                                      ./scripts/run.sh --duration 5 --vcpus 2
# env:   COIOMMU_PRESET     CMake preset to build (default: release)
#        COIOMMU_BUILD_DIR  an already configured build tree to build and use instead of a preset
#        JOBS               parallel build jobs (default: number of cores)
#        COIOMMU_SKIP_DEPS  set to 1 to skip scripts/deps.sh (packages known to be present)
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

# Only what the demo needs: the daemon (required), then the tracing CLI and the load generator the
# demo points to (optional: the demo runs without them).
echo "run: building coiommud in $BUILD"
cmake --build "$BUILD" -j "$JOBS" --target coiommud
available=$(cmake --build "$BUILD" --target help 2>/dev/null || true)
for t in coiommu-trace coiommu-load; do
  if grep -q "^$t:" <<<"$available"; then
    cmake --build "$BUILD" -j "$JOBS" --target "$t" >/dev/null 2>&1 ||
      echo "run: warning: $t did not build (the demo runs without it)"
  fi
done

exec "$BUILD/engine/daemon/coiommud" --demo "$@"
