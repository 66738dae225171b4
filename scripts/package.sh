#!/usr/bin/env bash
# Builds the Debian packages (coiommu, coiommu-dev) from the `package` preset (the release build
# under /usr) and, with --check, proves them the way an operator meets them: contents, lintian with
# no errors, dpkg -i, the installed programs' --version, systemd-analyze verify on the installed
# units, the C example built through pkg-config against the installed -dev package, and a clean
# removal and purge.
#
# usage: scripts/package.sh [--check]     (the .deb files land in build/package/)
# env:   JOBS  parallel build jobs (default: number of cores)
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=${JOBS:-$(nproc)}
CHECK=0
[ "${1:-}" = "--check" ] && CHECK=1
BUILD=build/package

say() { printf 'package: %s\n' "$*"; }
fail() { printf 'package: FAILED: %s\n' "$*" >&2; exit 1; }

cmake --preset package >/dev/null
cmake --build --preset package -j "$JOBS"
rm -f "$BUILD"/*.deb
(cd "$BUILD" && cpack -G DEB >/dev/null)
mapfile -t debs < <(ls "$BUILD"/*.deb)
[ ${#debs[@]} -eq 2 ] || fail "expected 2 .deb files, got: ${debs[*]:-none}"
for d in "${debs[@]}"; do say "built $d ($(du -h "$d" | cut -f1))"; done
[ "$CHECK" = 1 ] || exit 0

main_deb=$(ls "$BUILD"/coiommu_*.deb)
dev_deb=$(ls "$BUILD"/coiommu-dev_*.deb)

# 1. Contents: every file an operator looks for is where the documentation says.
contents=$(dpkg-deb -c "$main_deb")
for f in ./usr/bin/coiommud ./usr/bin/coiommu-trace ./usr/bin/coiommu-load \
         ./lib/systemd/system/coiommud.service ./lib/systemd/system/coiommud.socket \
         ./etc/coiommu/coiommud.conf \
         ./usr/share/coiommu/dashboards/grafana/coiommu-overview.json \
         ./usr/share/coiommu/dashboards/prometheus/rules.yml \
         ./usr/share/coiommu/dashboards/RUNBOOK.md \
         ./usr/share/man/man8/coiommud.8.gz ./usr/share/man/man5/coiommud.conf.5.gz \
         ./usr/share/man/man8/coiommu-trace.8.gz ./usr/share/man/man1/coiommu-load.1.gz \
         ./usr/share/bash-completion/completions/coiommud ./usr/share/doc/coiommu/copyright; do
  grep -q " $f\$" <<<"$contents" || fail "$main_deb lacks $f"
done
grep -qx /etc/coiommu/coiommud.conf <<<"$(dpkg-deb -I "$main_deb" conffiles)" || fail "coiommud.conf is not a conffile"
dev_contents=$(dpkg-deb -c "$dev_deb")
for f in ./usr/include/coiommu/client.h coiommu-client.pc libcoiommu-client.so; do
  grep -q "$f" <<<"$dev_contents" || fail "$dev_deb lacks $f"
done
say "contents: ok"

# 2. lintian: no errors (warnings are printed for the reader).
lint=$(lintian --no-tag-display-limit "${debs[@]}" 2>&1 || true)
[ -n "$lint" ] && printf '%s\n' "$lint"
if grep -q '^E: ' <<<"$lint"; then fail "lintian reported errors"; fi
say "lintian: no errors"

# 3. Install, use, verify, remove.
dpkg -i "$main_deb" "$dev_deb" >/dev/null
trap 'dpkg --purge coiommu-dev coiommu >/dev/null 2>&1 || true' EXIT
/usr/bin/coiommud --version | grep -E '^coiommud [0-9]+\.[0-9]+\.[0-9]+ \(git [0-9a-f]+' ||
  fail "installed coiommud --version"
grep -q '^coiommu-trace ' <<<"$(/usr/bin/coiommu-trace --version)" || fail "installed coiommu-trace --version"
grep -q '^coiommu-load ' <<<"$(/usr/bin/coiommu-load --version)" || fail "installed coiommu-load --version"
getent passwd coiommu >/dev/null || fail "postinst did not create the coiommu user"
systemd-analyze verify /lib/systemd/system/coiommud.socket /lib/systemd/system/coiommud.service ||
  fail "systemd-analyze verify"
man -w coiommud >/dev/null 2>&1 || say "note: man-db not installed; pages checked by lintian only"
say "installed: --version, user, systemd-analyze verify ok"

if [ -f engine/client/examples/vmm_example.c ]; then
  tmp=$(mktemp -d)
  # shellcheck disable=SC2046 # pkg-config's flags are meant to split
  cc -std=c11 -Wall -Wextra -Werror -o "$tmp/vmm_example" engine/client/examples/vmm_example.c \
    $(pkg-config --cflags --libs coiommu-client) || fail "the C example does not build against coiommu-dev"
  # The installed daemon, the installed library: a whole VMM session.
  tests/integration/c_client/run_example.sh /usr/bin/coiommud "$tmp/vmm_example" 2 ||
    fail "the C example's session against the installed coiommud"
  # Not `ldd | grep -q`: under pipefail grep's early exit can SIGPIPE ldd (failed 1 run in 3 here).
  grep -qE 'libcoiommu-client.so.0 => /(usr/)?lib/' <<<"$(ldd "$tmp/vmm_example")" || fail "example not linked to the installed library"
  rm -rf "$tmp"
  say "C example: built through pkg-config against coiommu-dev, drove a session against /usr/bin/coiommud"
fi

dpkg -r coiommu-dev >/dev/null
dpkg -r coiommu >/dev/null
[ ! -e /usr/bin/coiommud ] || fail "dpkg -r left /usr/bin/coiommud"
[ -e /etc/coiommu/coiommud.conf ] || fail "dpkg -r removed the conffile (only purge may)"
dpkg --purge coiommu >/dev/null
[ ! -e /etc/coiommu/coiommud.conf ] || fail "dpkg --purge left /etc/coiommu/coiommud.conf"
trap - EXIT
say "removed and purged cleanly"
say "all checks passed"
