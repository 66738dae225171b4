#!/bin/bash
# libcoiommu-client.so's ABI: SONAME libcoiommu-client.so.0, version nodes COIOMMU_CLIENT_0.1 and
# COIOMMU_CLIENT_0.2 (protocol minor 1), and exactly the functions coiommu/client.h declares
# exported (nm -D --defined-only), no more. A function is in 0.2 when the header says so
# ("symbol node COIOMMU_CLIENT_0.2" in the comment above it), else in 0.1; released ones never move.
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
for node in 0.1 0.2; do
    grep -A4 '^Version definitions' <<<"$headers" | grep "COIOMMU_CLIENT_${node//./\\.}\$" >/dev/null ||
        fail "no COIOMMU_CLIENT_$node version definition"
done

# binutils >= 2.37 prints name@@VERSION by default: compare bare names.
exported=$(nm -D --defined-only "$lib" | awk '{sub(/@.*/, "", $3); print $3}' | sort)
declared=$(grep -oE 'COIOMMU_CLIENT_API [^(]*\bcoiommu_client_[a-z_]+\(' "$header" |
    grep -oE 'coiommu_client_[a-z_]+' | sort -u)
expected=$(printf '%s\nCOIOMMU_CLIENT_0.1\nCOIOMMU_CLIENT_0.2\n' "$declared" | sort)
if [[ $exported != "$expected" ]]; then
    diff <(echo "$expected") <(echo "$exported") >&2 || true
    fail "exported symbols (right) differ from the header's functions (left)"
fi
# Every function is in its node: the 0.2 ones are the functions the header marks so.
in_02=$(grep -A3 'symbol node COIOMMU_CLIENT_0.2' "$header" | grep -oE 'coiommu_client_[a-z_]+\(' | tr -d '(' | sort -u)
[[ -n $in_02 ]] || fail "the header marks no function for COIOMMU_CLIENT_0.2"
versioned=$(nm -D --defined-only --with-symbol-versions "$lib" | grep ' T ')
while read -r _ _ sym; do
    name=${sym%%@*} node=${sym##*@@}
    want=COIOMMU_CLIENT_0.1
    grep -qx "$name" <<<"$in_02" && want=COIOMMU_CLIENT_0.2
    [[ $node == "$want" ]] || fail "$name is in $node, not $want"
done <<<"$versioned"
echo "PASS: $(wc -l <<<"$declared") functions exported, $(wc -l <<<"$in_02") of them in COIOMMU_CLIENT_0.2"
