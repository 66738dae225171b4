#!/usr/bin/env bash
# Runs a test program against real kernel VFIO inside a throw-away QEMU guest.
#
# The host kernel here has no VFIO and its /dev/kvm is PVM (a stock kernel hangs under it), so
# the guest runs under TCG: a stock Debian kernel (downloaded with apt-get download, never
# installed), or with --kernel iommufd one built by scripts/guest-kernel.sh, on q35 with an
# emulated Intel VT-d and QEMU's `edu` PCI device. /init loads the vfio modules (the iommufd
# kernel has them built in), binds edu to vfio-pci and runs the test as root with
#   VFIO_BDF=<edu bdf>  VFIO_GROUP=/dev/vfio/<group>  VFIO_KERNEL=debian|iommufd
# and, with --kernel iommufd, VFIO_CDEV=/dev/vfio/devices/vfio<N> (edu's device cdev)
# in the environment. See engine/README.md, "Real VFIO in a QEMU guest" (what was measured, and the pitfalls).
#
# usage: scripts/vfio-vm-test.sh [--prepare] [--kernel debian|iommufd] [--with PROGRAM]... TEST_BINARY [ARGS...]
#   --prepare       only download (or build) and cache the guest kernel and modules, then exit
#   --kernel K      debian (default): Debian 12's stock 6.1 kernel and its vfio modules.
#                   iommufd: a 6.12 kernel built once by scripts/guest-kernel.sh from Debian's
#                   linux-source-6.12, everything built in: the type1 container on /dev/vfio/vfio
#                   plus /dev/iommu and the VFIO device cdev (/dev/vfio/devices/vfioN).
#   --with PROGRAM  also copy PROGRAM (and its ldd libraries) into the guest as /opt/bin/<name>;
#                   the test finds it there (VFIO_VM_BINDIR=/opt/bin, also on PATH). Repeatable.
#   TEST_BINARY     static or dynamic (its ldd libraries are copied into the initramfs)
#
# env:
#   VFIO_VM_WORK  cache dir for the extracted kernel (default ${XDG_CACHE_HOME:-$HOME/.cache}/coiommu-vfio-vm)
#   KPKG          kernel package to use (default: what linux-image-amd64 depends on)
#   QEMU_TIMEOUT  hang guard in seconds for the whole guest run (default 300)
#   SMP, MEM      guest vCPUs and RAM (default 2, 1G)
#   ALLOW_SKIP=1  accept skipped gtest cases (by default a skip inside the guest is a failure:
#                 everything a VFIO test needs is there, so a skip means the test is broken)
#   KEEP_RUN=1    keep the per-run dir (initramfs, serial.log) and print its path
#
# exit status: the test program's exit status inside the guest, or
#   97 setup failed (no kernel, no edu device, no vfio group; iommufd: no /dev/iommu or cdev)   98 gtest ran no test or skipped one
#   99 the guest printed no result                              124 QEMU_TIMEOUT hit
set -euo pipefail

PREPARE=0
KERNEL=debian
WITH=()
while :; do
  case "${1:-}" in
    --prepare) PREPARE=1; shift ;;
    --kernel)
      case "${2:-}" in debian | iommufd) KERNEL=$2 ;; *) echo "vfio-vm: --kernel debian|iommufd" >&2; exit 2 ;; esac
      shift 2 ;;
    --with)
      [ $# -ge 2 ] || { echo "vfio-vm: --with needs a program" >&2; exit 2; }
      WITH+=("$2"); shift 2 ;;
    *) break ;;
  esac
done
if [ "$PREPARE" = 0 ] && [ $# -lt 1 ]; then
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
  exit 2
fi

WORK=${VFIO_VM_WORK:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/coiommu-vfio-vm}
log() { printf 'vfio-vm: %s\n' "$*" >&2; }
die() { log "$2"; exit "$1"; }

for tool in qemu-system-x86_64 cpio gzip dpkg-deb tar flock timeout; do
  command -v "$tool" >/dev/null || die 97 "missing $tool (run scripts/deps.sh)"
done
BUSYBOX=/bin/busybox
[ -x "$BUSYBOX" ] || die 97 "missing $BUSYBOX (package busybox-static)"
if ldd "$BUSYBOX" >/dev/null 2>&1; then die 97 "$BUSYBOX is dynamic; install busybox-static"; fi

mkdir -p "$WORK"

# ---- 1. guest kernel: Debian vmlinuz + vfio modules extracted once per version, or the iommufd
#         bzImage of scripts/guest-kernel.sh ------------------------------------------------------
# Load order (from the 6.1 modules.dep; the .deb ships none). Modules a kernel does not have
# (vfio_virqfd is folded into vfio from 6.2; iommufd is new in 6.2) are skipped.
MODS="virt/lib/irqbypass drivers/iommu/iommufd/iommufd drivers/vfio/vfio drivers/vfio/vfio_iommu_type1
      drivers/vfio/vfio_virqfd drivers/vfio/pci/vfio-pci-core drivers/vfio/pci/vfio-pci"

resolve_kpkg() {
  # awk reads to the end (no `exit`): an early exit could SIGPIPE apt-cache under pipefail.
  apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ && !found {print $2; found = 1}'
}

# Debian kernels only (their dirs are named by kernel release): the iommufd-* dirs of
# scripts/guest-kernel.sh hold a bzImage and no modules.
newest_cached() { ls -1d "$WORK"/[0-9]*/.complete 2>/dev/null | sort -V | tail -n1 | xargs -r dirname | xargs -r basename; }

fetch_kernel() {
  local tmp
  tmp=$(mktemp -d "$WORK/fetch.XXXXXX")
  log "downloading $KPKG (about 70 MB, once)"
  local sandbox=()
  [ "$(id -u)" = 0 ] && sandbox=(-o APT::Sandbox::User=root)
  (cd "$tmp" && apt-get download -q "${sandbox[@]}" "$KPKG" >/dev/null) || { rm -rf "$tmp"; return 1; }
  mkdir -p "$tmp/root"
  dpkg-deb --fsys-tarfile "$tmp"/"$KPKG"_*.deb | tar -x -C "$tmp/root" --wildcards --no-anchored \
    "boot/vmlinuz-$KVER" '*/kernel/drivers/vfio/*' '*/kernel/virt/lib/irqbypass.ko*' \
    '*/kernel/drivers/iommu/iommufd/*' 2>/dev/null || true
  local kroot=$tmp/root
  local moddir
  moddir=$(ls -1d "$kroot"/lib/modules/"$KVER"/kernel "$kroot"/usr/lib/modules/"$KVER"/kernel 2>/dev/null | head -n1 || true)
  [ -f "$kroot/boot/vmlinuz-$KVER" ] && [ -n "$moddir" ] || { rm -rf "$tmp"; log "unexpected layout in $KPKG"; return 1; }
  rm -rf "$KDIR"; mkdir -p "$KDIR/modules"
  cp "$kroot/boot/vmlinuz-$KVER" "$KDIR/vmlinuz"
  local m f name
  for m in $MODS; do
    f=$(ls -1 "$moddir/$m".ko* 2>/dev/null | head -n1 || true)
    [ -n "$f" ] || continue
    name=$(basename "$m").ko
    case $f in
      *.ko.xz) xz -dc "$f" >"$KDIR/modules/$name" ;;
      *.ko.zst) zstd -qdc "$f" >"$KDIR/modules/$name" ;;
      *.ko) cp "$f" "$KDIR/modules/$name" ;;
    esac
  done
  [ -f "$KDIR/modules/vfio-pci.ko" ] || { rm -rf "$tmp" "$KDIR"; log "no vfio-pci module in $KPKG"; return 1; }
  rm -rf "$tmp"
  touch "$KDIR/.complete"
}

# Sets KVER and KDIR: the cached Debian kernel, downloaded and extracted first if needed.
debian_kernel() {
  KPKG=${KPKG:-$(resolve_kpkg)}
  if [ -z "$KPKG" ]; then
    if [ "$(id -u)" = 0 ]; then
      log "apt-cache knows no linux-image-amd64; running apt-get update"
      apt-get update -qq || true
      KPKG=$(resolve_kpkg)
    fi
  fi
  if [ -z "$KPKG" ]; then
    # Offline rerun: fall back to the newest kernel already in the cache.
    KVER=$(newest_cached)
    [ -n "$KVER" ] || die 97 "cannot resolve the linux-image-amd64 dependency and nothing is cached in $WORK"
    log "using cached kernel $KVER (apt could not resolve linux-image-amd64)"
  else
    KVER=${KPKG#linux-image-}
  fi
  KDIR=$WORK/$KVER

  if [ ! -f "$KDIR/.complete" ]; then
    exec 9>"$WORK/lock"
    flock 9  # another run may be extracting the same kernel
    if [ ! -f "$KDIR/.complete" ] && ! fetch_kernel; then
      # The mirror moved on (old ABIs leave it) or is unreachable: use what the cache has.
      KVER=$(newest_cached)
      [ -n "$KVER" ] || die 97 "could not fetch kernel package $KPKG and nothing is cached in $WORK"
      KDIR=$WORK/$KVER
      log "could not fetch $KPKG; using cached kernel $KVER"
    fi
    flock -u 9
    exec 9>&-
  fi
}

if [ "$KERNEL" = iommufd ]; then
  # Everything is built in: nothing to insmod.
  MODS=""
  KIMG=$("$(dirname "$0")/guest-kernel.sh") || die 97 "scripts/guest-kernel.sh could not provide the iommufd kernel"
  KDIR=$(dirname "$KIMG")
  KVER=$(basename "$KDIR")
else
  debian_kernel
  KIMG=$KDIR/vmlinuz
fi
if [ "$PREPARE" = 1 ]; then
  log "kernel $KVER ready in $KDIR"
  exit 0
fi

# ---- 2. initramfs: busybox, modules, /init, the test and its shared libraries ----------------
TEST=$1; shift
[ -f "$TEST" ] && [ -x "$TEST" ] || die 97 "test binary $TEST not found or not executable"
RUN=$(mktemp -d "${TMPDIR:-/tmp}/coiommu-vfio-vm.XXXXXX")
cleanup() { if [ "${KEEP_RUN:-0}" = 1 ]; then log "run dir kept: $RUN"; else rm -rf "$RUN"; fi; }
trap cleanup EXIT
S=$RUN/initramfs
mkdir -p "$S"/{bin,proc,sys,dev,tmp,lib/modules,opt/bin}
cp "$BUSYBOX" "$S/bin/busybox"
if [ -n "$MODS" ]; then cp "$KDIR"/modules/*.ko "$S/lib/modules/"; fi
copy_libs() {
  if ldd "$1" >/dev/null 2>&1; then
    local lib
    for lib in $(ldd "$1" | grep -o '/[^ ]*'); do
      [ -e "$S$lib" ] && continue
      mkdir -p "$S$(dirname "$lib")"
      cp -L "$lib" "$S$lib"
    done
  fi
}
cp "$TEST" "$S/test"
copy_libs "$TEST"
for prog in "${WITH[@]}"; do
  [ -f "$prog" ] && [ -x "$prog" ] || die 97 "--with $prog: not found or not executable"
  cp "$prog" "$S/opt/bin/$(basename "$prog")"
  copy_libs "$prog"
done
: >"$S/test.args"
for a in "$@"; do printf '%s\n' "$a" >>"$S/test.args"; done
loads=""
for m in $MODS; do loads="$loads $(basename "$m")"; done
# The iommufd kernel's extra devices: /dev/iommu and edu's VFIO device cdev (its vfioN is listed
# under the device's vfio-dev/ in sysfs). Pasted into /init below.
kernel_init=""
if [ "$KERNEL" = iommufd ]; then
  kernel_init=$(cat <<'KINIT'
[ -c /dev/iommu ] || { echo "INIT no /dev/iommu: the kernel has no IOMMUFD"; result 97; }
CDEV=$(ls /sys/bus/pci/devices/$BDF/vfio-dev 2>/dev/null | head -n1)
[ -n "$CDEV" ] && [ -c /dev/vfio/devices/$CDEV ] || { echo "INIT no vfio device cdev for $BDF"; result 97; }
export VFIO_CDEV=/dev/vfio/devices/$CDEV
echo "INIT iommufd: /dev/iommu cdev $VFIO_CDEV"
KINIT
)
fi

cat >"$S/init" <<INIT
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/opt/bin VFIO_VM_BINDIR=/opt/bin
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
exec </dev/console >/dev/console 2>&1
echo "INIT start uptime=\$(cut -d' ' -f1 /proc/uptime)"
# For BPF tests (tests/vm/bpf_*_vmtest.cc): the syscall tracepoints need tracefs, pinning needs
# bpffs, CO-RE needs the kernel's BTF. 6.1 charges BPF maps to memcg, but older kernels count
# them against RLIMIT_MEMLOCK. Harmless for every other test.
mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null || echo "INIT mount tracefs FAILED"
mount -t bpf bpf /sys/fs/bpf 2>/dev/null || echo "INIT mount bpffs FAILED"
ulimit -l unlimited 2>/dev/null || echo "INIT ulimit -l unlimited FAILED"
[ -r /sys/kernel/btf/vmlinux ] && BTF=yes || BTF=no
echo "INIT bpf: btf=\$BTF tracefs=\$([ -d /sys/kernel/tracing/events ] && echo yes || echo no)"
result() { echo "INIT test-exit=\$1"; poweroff -f; }
for m in $loads; do
  [ -f /lib/modules/\$m.ko ] && { insmod /lib/modules/\$m.ko || echo "INIT insmod \$m FAILED"; }
done
BDF=
for d in /sys/bus/pci/devices/*; do
  [ "\$(cat \$d/vendor)" = 0x1234 ] && [ "\$(cat \$d/device)" = 0x11e8 ] && BDF=\${d##*/}
done
[ -n "\$BDF" ] || { echo "INIT no edu device"; result 97; }
echo vfio-pci > /sys/bus/pci/devices/\$BDF/driver_override
echo \$BDF > /sys/bus/pci/drivers_probe
GROUP=\$(readlink /sys/bus/pci/devices/\$BDF/iommu_group)
[ -n "\$GROUP" ] && [ -c /dev/vfio/\${GROUP##*/} ] || { echo "INIT no vfio group for \$BDF"; result 97; }
export VFIO_BDF=\$BDF VFIO_GROUP=/dev/vfio/\${GROUP##*/} VFIO_KERNEL=$KERNEL GTEST_COLOR=no
$kernel_init
echo "INIT \$BDF -> \$(readlink /sys/bus/pci/devices/\$BDF/driver) group \$VFIO_GROUP uptime=\$(cut -d' ' -f1 /proc/uptime)"
# Keep kernel messages (expected DMAR faults) off the console while the test prints; they are
# dumped from dmesg afterwards.
echo "1 4 1 7" > /proc/sys/kernel/printk
set --
while IFS= read -r a; do set -- "\$@" "\$a"; done < /test.args
/test "\$@"
rc=\$?
echo "INIT test done uptime=\$(cut -d' ' -f1 /proc/uptime)"
dmesg | grep -iE 'vfio|DMAR' | tail -n 20 | sed 's/^/DMESG /'
result \$rc
INIT
chmod 755 "$S/init"
# No /dev/console node is needed: the kernel's built-in initramfs has one, and /init reopens
# it after mounting devtmpfs. So building the image needs no root.
(cd "$S" && find . | cpio -o -H newc --quiet) | gzip -1 >"$RUN/initramfs.cpio.gz"
rm -rf "$S"

# ---- 3. boot (TCG only: this host's /dev/kvm is PVM, which runs only PVM guests; engine/README.md) ---------------------------
LOG=$RUN/serial.log
log "booting $KVER under TCG (timeout ${QEMU_TIMEOUT:-300}s)"
start=$(date +%s)
set +e
timeout --kill-after=10 "${QEMU_TIMEOUT:-300}" qemu-system-x86_64 -no-user-config -nodefaults \
  -accel tcg -cpu max -smp "${SMP:-2}" -m "${MEM:-1G}" \
  -machine q35,kernel-irqchip=split \
  -device intel-iommu,intremap=on,caching-mode=on \
  -device edu \
  -kernel "$KIMG" -initrd "$RUN/initramfs.cpio.gz" \
  -append "console=ttyS0 intel_iommu=on iommu=pt panic=-1 quiet" \
  -display none -serial stdio -monitor none -no-reboot </dev/null 2>&1 | tr -d '\r' | tee "$LOG"
qrc=${PIPESTATUS[0]}
set -e
log "guest run took $(($(date +%s) - start)) s (qemu exit $qrc)"

if [ "$qrc" = 124 ] || [ "$qrc" = 137 ]; then
  die 124 "QEMU_TIMEOUT (${QEMU_TIMEOUT:-300}s) hit: guest hung"
fi
rc=$(sed -n 's/.*INIT test-exit=\([0-9]*\).*/\1/p' "$LOG" | tail -n1)
[ -n "$rc" ] || die 99 "the guest printed no test result (qemu exit $qrc)"
if [ "$rc" = 0 ] && grep -q '^\[==========\] Running' "$LOG"; then
  ran=$(sed -n 's/^\[==========\] \([0-9]*\) tests\{0,1\} from .* ran\..*/\1/p' "$LOG" | tail -n1)
  [ -n "$ran" ] && [ "$ran" -gt 0 ] || die 98 "gtest ran no test inside the guest"
  if [ "${ALLOW_SKIP:-0}" != 1 ] && grep -q '^\[  SKIPPED \]' "$LOG"; then
    die 98 "gtest skipped tests inside the guest (ALLOW_SKIP=1 to accept)"
  fi
fi
log "test exit status $rc"
exit "$rc"
