#!/usr/bin/env bash
# Runs the README's run command (`./scripts/run.sh --duration N`) as a user would and fails when it
# fails, when the demo does not reach its summary, or when it prints any warning or error line.
#
# usage: scripts/check-run.sh [seconds]     (default 5)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
out=$(mktemp)
trap 'rm -f "$out"' EXIT
if ! COIOMMU_SKIP_DEPS=1 ./scripts/run.sh --duration "$secs" >"$out" 2>&1; then
  cat "$out"
  echo "check-run: ./scripts/run.sh --duration $secs failed" >&2
  exit 1
fi
cat "$out"
# Log lines start with their level (WARN/ERROR, or <N> priority prefixes under journald).
if grep -nE '^(WARN|ERROR)|^<[0-4]>|warning:|error:' "$out"; then
  echo "check-run: the run command printed the warnings above" >&2
  exit 1
fi
for want in '^summary after' 'teardown .* 0 DMA mappings left' '^where to look next'; do
  grep -qE "$want" "$out" || { echo "check-run: output lacks /$want/" >&2; exit 1; }
done
# The engine's teardown log and the summary count the same pages (one number, read at one time).
engine_count=$(sed -nE 's/.*stopped: ([0-9]+) pages unmapped at teardown.*/\1/p' "$out" | head -1)
summary_count=$(sed -nE 's/^  teardown +([0-9]+) pinned pages unmapped.*/\1/p' "$out" | head -1)
if [ -z "$engine_count" ] || [ "$engine_count" != "$summary_count" ]; then
  echo "check-run: teardown counts disagree: engine log '${engine_count}', summary '${summary_count}'" >&2
  exit 1
fi
echo "check-run: the run command ended cleanly without a warning (teardown: $engine_count pages, both counts)"
