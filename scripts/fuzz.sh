#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz, the `fuzz` preset: clang, ASan+UBSan) and fuzzes each
# for a bounded time or number of runs, starting from a copy of its committed seed corpus
# (tests/fuzz/corpus/<target>). Any crash, leak, timeout or invariant failure fails the run; the
# input that caused it is left in the work directory (crash-*, leak-*, timeout-*) and named.
#
# usage: scripts/fuzz.sh [--time SECONDS] [--runs N] [--write-seeds] [TARGET ...]
#   --time S       fuzz each target for S seconds (default 45)
#   --runs N       instead: run each target for N inputs (e.g. 10000000 for the offline runs)
#   --write-seeds  regenerate tests/fuzz/corpus/<target> from each target's seed generator, then exit
#   TARGET         fuzz_protocol_session, fuzz_dtt_pin, fuzz_viommu, fuzz_config,
#                  fuzz_resume_record (default: all)
# env:   FUZZ_BUILD  build tree (default build/fuzz)
#        FUZZ_WORK   where the corpora copies and artifacts go (default $FUZZ_BUILD/work)
#        JOBS        parallel build jobs (default: number of cores)
#
# Reproduce a crash: $FUZZ_BUILD/tests/fuzz/<target> <crash file>   (COIOMMU_FUZZ_TRACE=1 prints
# what each step of the input did).
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=${JOBS:-$(nproc)}
BUILD=${FUZZ_BUILD:-build/fuzz}
WORK=${FUZZ_WORK:-$BUILD/work}
ALL_TARGETS=(fuzz_protocol_session fuzz_dtt_pin fuzz_viommu fuzz_config fuzz_resume_record)
TIME=45
RUNS=""
WRITE_SEEDS=0
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --time) TIME=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --write-seeds) WRITE_SEEDS=1; shift ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    fuzz_*) targets+=("$1"); shift ;;
    *) echo "fuzz.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[ ${#targets[@]} -gt 0 ] || targets=("${ALL_TARGETS[@]}")

if [ ! -f "$BUILD/CMakeCache.txt" ]; then
  cmake --preset fuzz -B "$BUILD" >/dev/null
fi
cmake --build "$BUILD" -j "$JOBS" --target coiommu_fuzzers

if [ "$WRITE_SEEDS" = 1 ]; then
  for t in "${targets[@]}"; do
    rm -rf "tests/fuzz/corpus/$t"
    mkdir -p "tests/fuzz/corpus/$t"
    COIOMMU_FUZZ_WRITE_SEEDS="tests/fuzz/corpus/$t" "$BUILD/tests/fuzz/$t"
  done
  exit 0
fi

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:allocator_may_return_null=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
if [ -n "$RUNS" ]; then limit=(-runs="$RUNS"); else limit=(-max_total_time="$TIME"); fi
failed=()
for t in "${targets[@]}"; do
  dir="$WORK/$t"
  rm -rf "$dir"
  mkdir -p "$dir/corpus"
  cp "tests/fuzz/corpus/$t/"* "$dir/corpus/"
  printf '\n=== %s (%s)\n' "$t" "${limit[*]}"
  start=$(date +%s)
  # -timeout: an input running 25 s is a hang; -rss_limit_mb: a leak or unbounded growth.
  if "$BUILD/tests/fuzz/$t" "${limit[@]}" -timeout=25 -rss_limit_mb=2048 -print_final_stats=1 \
       -artifact_prefix="$dir/" "$dir/corpus" >"$dir/log" 2>&1; then
    status=ok
  else
    status=FAILED
    failed+=("$t")
  fi
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$dir/log" | tail -1)
  secs=$(( $(date +%s) - start ))
  cov=$(grep -Eo 'cov: [0-9]+ ft: [0-9]+' "$dir/log" | tail -1 || true)
  echo "$t: $status, ${execs:-?} executions in ${secs}s ($(( ${execs:-0} / (secs > 0 ? secs : 1) )) exec/s), ${cov:-no coverage line}, corpus $(ls "$dir/corpus" | wc -l) inputs"
  if [ "$status" = FAILED ]; then
    tail -n 40 "$dir/log" >&2
    ls "$dir"/crash-* "$dir"/leak-* "$dir"/timeout-* "$dir"/oom-* 2>/dev/null | sed 's/^/  input: /' >&2 || true
    echo "  reproduce: $BUILD/tests/fuzz/$t <input>   (log: $dir/log)" >&2
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz.sh: failed: ${failed[*]}" >&2
  exit 1
fi
echo "fuzz.sh: ${#targets[@]} targets, no crash"
