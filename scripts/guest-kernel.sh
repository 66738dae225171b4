#!/usr/bin/env bash
# Builds (once) the iommufd guest kernel for scripts/vfio-vm-test.sh --kernel iommufd and prints
# the path of its bzImage on stdout.
#
# No Debian kernel image enables CONFIG_IOMMUFD, and bookworm's 6.1 predates the VFIO device cdev,
# so this builds one from Debian's own linux-source-6.12 package: `make tinyconfig`, merged with
# scripts/guest-kernel.config (everything built in, no modules), then `make olddefconfig`. Every
# line of the fragment must survive olddefconfig; a dropped one fails the build by name, so a
# dependency that changed never silently yields a kernel without VFIO or BTF.
#
# usage: scripts/guest-kernel.sh [--rebuild]
#   --rebuild   drop the cached kernel for this package version and fragment, build again
#
# env:
#   VFIO_VM_WORK  cache dir, shared with vfio-vm-test.sh
#                 (default ${XDG_CACHE_HOME:-$HOME/.cache}/coiommu-vfio-vm); the kernel lands in
#                 $VFIO_VM_WORK/iommufd-<linux-source-6.12 version>-<fragment sha256, 12>/bzImage
#   JOBS          make -j (default: nproc)
#
# Needs (installed with apt-get when run as root, otherwise run scripts/deps.sh): build-essential
# bc bison flex libelf-dev libssl-dev dwarves (pahole, for BTF) xz-utils cpio linux-source-6.12
# (bookworm-security; /usr/src/linux-source-6.12.tar.xz).
#
# exit status: 0 and the bzImage path on stdout; 97 missing packages or a config line dropped;
# 1 the build failed (the log is kept in $VFIO_VM_WORK/iommufd-failed-build.log)
set -euo pipefail

REBUILD=0
case "${1:-}" in
  --rebuild) REBUILD=1 ;;
  "") ;;
  *) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
esac

HERE=$(cd "$(dirname "$0")" && pwd)
FRAG=$HERE/guest-kernel.config
SRCPKG=linux-source-6.12
TARBALL=/usr/src/$SRCPKG.tar.xz
WORK=${VFIO_VM_WORK:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/coiommu-vfio-vm}
log() { printf 'guest-kernel: %s\n' "$*" >&2; }
die() { log "$2"; exit "$1"; }

# ---- 1. build dependencies -----------------------------------------------------------------------
DEPS=(build-essential bc bison flex libelf-dev libssl-dev dwarves xz-utils cpio "$SRCPKG")
missing_deps() {
  local p
  for p in "${DEPS[@]}"; do
    grep -q "install ok installed" <<<"$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" || printf '%s ' "$p"
  done
}
missing=$(missing_deps)
if [ -n "$missing" ]; then
  [ "$(id -u)" = 0 ] || die 97 "missing packages: $missing(run scripts/deps.sh)"
  log "installing $missing"
  # shellcheck disable=SC2086  # a word list
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >&2; then
    log "apt-get install failed; running apt-get update and trying again"
    apt-get update -qq >&2 || true
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >&2 ||
      die 97 "could not install $missing($SRCPKG is in bookworm-security)"
  fi
fi
[ -f "$TARBALL" ] || die 97 "$SRCPKG is installed but $TARBALL is missing"

# ---- 2. cache key: the source package version and the fragment -----------------------------------
PKGVER=$(dpkg-query -W -f='${Version}' "$SRCPKG")
SUM=$(sha256sum "$FRAG" | cut -c1-12)
OUT=$WORK/iommufd-$PKGVER-$SUM
mkdir -p "$WORK"
if [ "$REBUILD" = 0 ] && [ -f "$OUT/.complete" ]; then
  echo "$OUT/bzImage"
  exit 0
fi

exec 9>"$WORK/iommufd.lock"
flock 9  # another run may be building the same kernel
if [ "$REBUILD" = 1 ]; then rm -rf "$OUT"; fi
if [ -f "$OUT/.complete" ]; then
  echo "$OUT/bzImage"
  exit 0
fi

# ---- 3. configure and build in a temp dir, removed afterwards (the unpacked source alone is 1.5 GB)
rm -rf "$WORK"/iommufd-build.*  # left by a killed run; the lock says none is running
TMP=$(mktemp -d "$WORK/iommufd-build.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
BLOG=$TMP/build.log
fail() {
  cp "$BLOG" "$WORK/iommufd-failed-build.log" 2>/dev/null || true
  tail -n 40 "$BLOG" >&2 || true
  die 1 "$1 (full log: $WORK/iommufd-failed-build.log)"
}

start=$(date +%s)
log "building $SRCPKG $PKGVER with $(basename "$FRAG") ($SUM) in $TMP; takes a while, once"
mkdir "$TMP/src"
tar -xf "$TARBALL" -C "$TMP/src" --strip-components=1
cd "$TMP/src"
# ARCH=x86_64 (not the default x86) so tinyconfig starts 64-bit instead of i386.
MK=(make ARCH=x86_64 KBUILD_BUILD_USER=coiommu KBUILD_BUILD_HOST=guest-kernel)
"${MK[@]}" tinyconfig >>"$BLOG" 2>&1 || fail "make tinyconfig failed"
scripts/kconfig/merge_config.sh -m .config "$FRAG" >>"$BLOG" 2>&1 || fail "merge_config.sh failed"
"${MK[@]}" olddefconfig >>"$BLOG" 2>&1 || fail "make olddefconfig failed"

# Every fragment line must be in the final config: `CONFIG_X=v` verbatim, `# CONFIG_X is not set`
# as anything but =y/=m.
dropped=()
while IFS= read -r line; do
  case $line in
    CONFIG_*=*)
      grep -qxF "$line" .config ||
        dropped+=("$line (got: $(grep -E "^(# )?${line%%=*}[= ]" .config || echo "absent: an unknown symbol, or a dependency is off"))")
      ;;
    "# CONFIG_"*" is not set")
      sym=${line#\# }
      sym=${sym%% *}
      if grep -qE "^$sym=" .config; then dropped+=("$line (got: $(grep -E "^$sym=" .config))"); fi
      ;;
  esac
done <"$FRAG"
if [ ${#dropped[@]} -gt 0 ]; then
  cp .config "$WORK/iommufd-dropped.config"
  log "olddefconfig dropped ${#dropped[@]} line(s) of $FRAG:"
  printf '  %s\n' "${dropped[@]}" >&2
  die 97 "fix the fragment (resulting config: $WORK/iommufd-dropped.config)"
fi

"${MK[@]}" -j"${JOBS:-$(nproc)}" bzImage >>"$BLOG" 2>&1 || fail "make bzImage failed"

rm -rf "$OUT"
rm -rf "$OUT.new"
mkdir -p "$OUT.new"
cp arch/x86/boot/bzImage "$OUT.new/bzImage"
cp .config "$OUT.new/config"
cp System.map "$OUT.new/System.map"
touch "$OUT.new/.complete"
mv "$OUT.new" "$OUT"
log "built $OUT/bzImage ($(du -k "$OUT/bzImage" | cut -f1) KiB) in $(($(date +%s) - start)) s"
echo "$OUT/bzImage"
