#!/usr/bin/env bash
# The tree's own habits, checked: clang-format (.clang-format at the root for C++, bpf/.clang-format
# for the kernel-style BPF C) and clang-tidy (.clang-tidy: bugprone-* and performance-* checks that
# catch real bugs here). Fails on any finding.
#
# usage: scripts/lint.sh [--fix]          (--fix: rewrite files with clang-format instead of failing)
# env:   LINT_BUILD  a configured build tree with compile_commands.json (default: build/dev; configured
#                    here when missing)
#        JOBS        parallel clang-tidy processes (default: number of cores)
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=${JOBS:-$(nproc)}
BUILD=${LINT_BUILD:-build/dev}
FIX=0
[ "${1:-}" = "--fix" ] && FIX=1

mapfile -t sources < <(git ls-files '*.cc' '*.h' '*.c' | grep -v '^tests/fuzz/corpus/')

# 1. Format: every file as clang-format would write it.
if [ "$FIX" = 1 ]; then
  clang-format -i "${sources[@]}"
  echo "lint: formatted ${#sources[@]} files"
  exit 0
fi
unformatted=()
for f in "${sources[@]}"; do
  if ! clang-format --dry-run --Werror "$f" >/dev/null 2>&1; then unformatted+=("$f"); fi
done
if [ ${#unformatted[@]} -gt 0 ]; then
  printf 'lint: not clang-formatted (scripts/lint.sh --fix rewrites them):\n' >&2
  printf '  %s\n' "${unformatted[@]}" >&2
  exit 1
fi
echo "lint: clang-format: ${#sources[@]} files clean"

# 2. clang-tidy over every translation unit of the build (the generated BPF skeletons are C that
#    GCC accepts in C++; clang needs _Bool spelled as bool there).
if [ ! -f "$BUILD/compile_commands.json" ]; then
  cmake --preset dev >/dev/null
fi
# Generated headers (BPF skeletons, the git revision) exist only in a built tree.
cmake --build "$BUILD" -j "$JOBS" >/dev/null
mapfile -t units < <(git ls-files '*.cc')
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! printf '%s\n' "${units[@]}" |
     xargs -P "$JOBS" -n 4 clang-tidy -p "$BUILD" --quiet --extra-arg=-D_Bool=bool >"$log" 2>&1; then
  grep -E '(error|warning):' "$log" | sort -u >&2 || cat "$log" >&2
  echo "lint: clang-tidy found the problems above" >&2
  exit 1
fi
echo "lint: clang-tidy: ${#units[@]} translation units clean"
