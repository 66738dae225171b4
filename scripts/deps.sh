#!/usr/bin/env bash
# Installs every Debian 12 package coiommu needs to build, test, run and trace. Idempotent:
# does nothing when all are present; runs `apt-get update` only when something is missing.
#
# usage: scripts/deps.sh [--check]   (--check: only report what is missing, exit 1 if any)
set -euo pipefail

PACKAGES=(
  # toolchain and build
  build-essential g++ gcc cmake ninja-build pkg-config git
  # engine
  libexpected-dev libtbb-dev libfmt-dev linux-libc-dev systemtap-sdt-dev nlohmann-json3-dev libcli11-dev libsystemd-dev
  # tests and benchmarks
  libgtest-dev libgmock-dev libbenchmark-dev python3
  # scripts/lint.sh
  clang-format clang-tidy
  # scripts/fuzz.sh: libFuzzer's runtime for clang 14 (the `fuzz` preset; clang is listed with BPF)
  libclang-rt-14-dev
  # BPF: clang compiles *.bpf.c, bpftool makes skeletons and is the investigation tool
  clang llvm libbpf-dev bpftool libelf-dev zlib1g-dev
  # exporter and its live tests (prometheus ships promtool)
  prometheus-cpp-dev prometheus curl
  # VFIO-in-QEMU harness (the guest kernel .deb is downloaded, never installed)
  qemu-system-x86 busybox-static cpio xz-utils kmod
  # its iommufd guest kernel, built by scripts/guest-kernel.sh (linux-source-6.12 is in
  # bookworm-security; dwarves is pahole, for BTF)
  bc bison flex libssl-dev dwarves linux-source-6.12
  # load generator plots
  gnuplot-nox
  # the Debian package: built with cpack, checked with lintian, units with systemd-analyze
  dpkg-dev fakeroot lintian systemd adduser man-db
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! grep -q "install ok installed" <<<"$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)"; then
    missing+=("$p")
  fi
done

if [ "${1:-}" = "--check" ]; then
  if [ ${#missing[@]} -gt 0 ]; then echo "missing: ${missing[*]}"; exit 1; fi
  echo "all ${#PACKAGES[@]} packages present"; exit 0
fi

if [ ${#missing[@]} -eq 0 ]; then
  echo "deps: all ${#PACKAGES[@]} packages present"
  exit 0
fi

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
echo "deps: installing ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "deps: done"
