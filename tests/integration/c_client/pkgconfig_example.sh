#!/bin/bash
# What a VMM's build does: install the dev and programs components into a fresh prefix, check the
# installed files, compile the example with nothing but `cc` and pkg-config (and the header alone,
# as C11 and as C++11), and run the result against coiommud with the installed library.
#
#   pkgconfig_example.sh CMAKE BUILD_DIR EXAMPLE_SOURCE COIOMMUD RUN_EXAMPLE VERSION
set -euo pipefail

cmake=$1
build=$2
source=$3
daemon=$4
run_example=$5
version=$6
cc=${CC:-cc}
cxx=${CXX:-c++}
read -ra extra_cflags <<<"${EXTRA_CFLAGS:-}"  # the build's sanitizer flags, if any

prefix=$(mktemp -d /tmp/coiommu-client-install.XXXXXX)
trap 'rm -rf "$prefix"' EXIT
fail() {
    echo "FAIL: $*" >&2
    exit 1
}

# `programs` is the whole runtime package (every program, units, man pages): a fully built tree.
for component in dev programs; do
    "$cmake" --install "$build" --component "$component" --prefix "$prefix" >"$prefix.log" 2>&1 || {
        cat "$prefix.log" >&2
        rm -f "$prefix.log"
        fail "cmake --install --component $component (is the whole tree built?)"
    }
done
rm -f "$prefix.log"

pc=$(find "$prefix" -name coiommu-client.pc)
[[ -n $pc && $(wc -l <<<"$pc") -eq 1 ]] || fail "coiommu-client.pc not installed exactly once: '$pc'"
PKG_CONFIG_PATH=$(dirname "$pc")
export PKG_CONFIG_PATH
unset PKG_CONFIG_SYSROOT_DIR PKG_CONFIG_LIBDIR
pkg-config --exists coiommu-client || fail "pkg-config does not find coiommu-client"
modversion=$(pkg-config --modversion coiommu-client)
[[ $modversion == "$version" ]] || fail "coiommu-client.pc says version $modversion, the project $version"
[[ $(pkg-config --variable=prefix coiommu-client) == "$prefix" ]] || fail "the .pc names another prefix"
libdir=$(pkg-config --variable=libdir coiommu-client)
includedir=$(pkg-config --variable=includedir coiommu-client)
[[ -f $includedir/coiommu/client.h ]] || fail "no header in $includedir"
[[ -L $libdir/libcoiommu-client.so ]] || fail "no libcoiommu-client.so link in $libdir"
[[ -e $libdir/libcoiommu-client.so.0 ]] || fail "no libcoiommu-client.so.0 in $libdir"
[[ -f $libdir/libcoiommu-client.so.$version ]] || fail "no libcoiommu-client.so.$version in $libdir"
read -ra cflags <<<"$(pkg-config --cflags coiommu-client)"
read -ra flags <<<"$(pkg-config --cflags --libs coiommu-client)"
echo "installed: $(cd "$prefix" && find . -type f -o -type l | sort | tr '\n' ' ')"

# The header stands alone, in C and in C++.
echo '#include <coiommu/client.h>' | "$cc" -std=c11 -Wall -Wextra -Werror -Wpedantic -fsyntax-only -x c - \
    "${cflags[@]}" || fail "the header does not compile as C11"
echo '#include <coiommu/client.h>' | "$cxx" -std=c++11 -Wall -Wextra -Werror -Wpedantic -fsyntax-only -x c++ - \
    "${cflags[@]}" || fail "the header does not compile as C++11"

exe=$prefix/vmm-example
# = cc -std=c11 -Wall -Wextra -Werror vmm_example.c $(pkg-config --cflags --libs coiommu-client)
"$cc" -std=c11 -Wall -Wextra -Werror "${extra_cflags[@]}" -o "$exe" "$source" "${flags[@]}" ||
    fail "the example does not build through pkg-config"
# (Outputs are captured before grep -q: with pipefail, a writer cut off by grep's early exit fails.)
headers=$(objdump -p "$exe")
grep -q 'NEEDED *libcoiommu-client\.so\.0$' <<<"$headers" || fail "the example does not need libcoiommu-client.so.0"

export LD_LIBRARY_PATH=$libdir
libs=$(ldd "$exe")
grep -q "libcoiommu-client\.so\.0 => $libdir/" <<<"$libs" || fail "the example does not load the installed library"
"$run_example" "$daemon" "$exe" 1
