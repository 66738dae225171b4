#!/bin/bash
# libcoiommu-client.so's ABI: SONAME libcoiommu-client.so.0, version nodes COIOMMU_CLIENT_0.1,
# COIOMMU_CLIENT_0.2 (protocol minor 1) and COIOMMU_CLIENT_0.3 (minor 2), and exactly the functions
# coiommu/client.h declares exported (nm -D --defined-only), no more. A function is in a later node
# when the header says so ("symbol node COIOMMU_CLIENT_0.N" in the last lines of the comment above
# it), else in 0.1; released ones never move.
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
nodes=(0.1 0.2 0.3)
for node in "${nodes[@]}"; do
    sed -n '/^Version definitions/,/^$/p' <<<"$headers" | grep -E "^[0-9]+ .* COIOMMU_CLIENT_${node//./\\.}\$" >/dev/null ||
        fail "no COIOMMU_CLIENT_$node version definition"
done

# binutils >= 2.37 prints name@@VERSION by default: compare bare names.
exported=$(nm -D --defined-only "$lib" | awk '{sub(/@.*/, "", $3); print $3}' | sort)
declared=$(grep -oE 'COIOMMU_CLIENT_API [^(]*\bcoiommu_client_[a-z_]+\(' "$header" |
    grep -oE 'coiommu_client_[a-z_]+' | sort -u)
expected=$( (echo "$declared" && printf 'COIOMMU_CLIENT_%s\n' "${nodes[@]}") | sort)
if [[ $exported != "$expected" ]]; then
    diff <(echo "$expected") <(echo "$exported") >&2 || true
    fail "exported symbols (right) differ from the header's functions (left)"
fi
# Every function is in its node: a later node's are the functions the header marks so.
declare -A node_of
for node in "${nodes[@]:1}"; do
    marked=$(grep -A3 "symbol node COIOMMU_CLIENT_$node" "$header" | grep -oE 'coiommu_client_[a-z_]+\(' | tr -d '(' | sort -u)
    [[ -n $marked ]] || fail "the header marks no function for COIOMMU_CLIENT_$node"
    for name in $marked; do node_of[$name]=COIOMMU_CLIENT_$node; done
done
versioned=$(nm -D --defined-only --with-symbol-versions "$lib" | grep ' T ')
while read -r _ _ sym; do
    name=${sym%%@*} node=${sym##*@@}
    want=${node_of[$name]:-COIOMMU_CLIENT_0.1}
    [[ $node == "$want" ]] || fail "$name is in $node, not $want"
done <<<"$versioned"
echo "PASS: $(wc -l <<<"$declared") functions exported; in later nodes: $(for n in "${nodes[@]:1}"; do
    printf '%s %d ' "$n" "$(printf '%s\n' "${node_of[@]}" | grep -cx "COIOMMU_CLIENT_$n")"
done)"
