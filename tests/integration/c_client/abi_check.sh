#!/bin/bash
# libcoiommu-client.so's ABI: SONAME libcoiommu-client.so.0, one version node COIOMMU_CLIENT_0.1,
# and exactly the functions coiommu/client.h declares exported (nm -D --defined-only), no more.
#
#   abi_check.sh LIBRARY HEADER
set -euo pipefail

lib=$1
header=$2
fail() {
    echo "FAIL: $*" >&2
    exit 1
}

# (Outputs are captured before grep -q: with pipefail, a writer cut off by grep's early exit fails.)
headers=$(objdump -p "$lib")
grep -Eq 'SONAME +libcoiommu-client\.so\.0$' <<<"$headers" || fail "SONAME is not libcoiommu-client.so.0"
grep -A3 '^Version definitions' <<<"$headers" | grep 'COIOMMU_CLIENT_0\.1$' >/dev/null ||
    fail "no COIOMMU_CLIENT_0.1 version definition"

# binutils >= 2.37 prints name@@VERSION by default: compare bare names.
exported=$(nm -D --defined-only "$lib" | awk '{sub(/@.*/, "", $3); print $3}' | sort)
declared=$(grep -oE 'COIOMMU_CLIENT_API [^(]*\bcoiommu_client_[a-z_]+\(' "$header" |
    grep -oE 'coiommu_client_[a-z_]+' | sort -u)
expected=$(printf '%s\nCOIOMMU_CLIENT_0.1\n' "$declared" | sort)
if [[ $exported != "$expected" ]]; then
    diff <(echo "$expected") <(echo "$exported") >&2 || true
    fail "exported symbols (right) differ from the header's functions (left)"
fi
# Every function is in the version node.
versioned=$(nm -D --defined-only --with-symbol-versions "$lib")
grep ' T ' <<<"$versioned" | grep -v '@@COIOMMU_CLIENT_0\.1$' && fail "a function outside COIOMMU_CLIENT_0.1"
echo "PASS: $(wc -l <<<"$declared") functions exported, versioned COIOMMU_CLIENT_0.1"
