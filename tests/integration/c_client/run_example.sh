#!/bin/bash
# Starts coiommud on a private socket, runs a VMM example (engine/client/examples/vmm_example.c, built
# by CMake or by hand through pkg-config) against it, checks its exit status and output, then
# stops the daemon with SIGTERM (exit 0 expected).
#
#   run_example.sh COIOMMUD EXAMPLE [VCPUS]
set -euo pipefail

daemon=$1
example=$2
vcpus=${3:-2}

dir=$(mktemp -d /tmp/coiommu-vmm-example.XXXXXX)
pid=
cleanup() {
    if [[ -n $pid ]]; then
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    rm -rf "$dir"
}
trap cleanup EXIT
fail() {
    echo "FAIL: $*" >&2
    for f in out err daemon.log; do
        [[ -s $dir/$f ]] && { echo "--- $f" >&2; cat "$dir/$f" >&2; }
    done
    exit 1
}

sock=$dir/coiommud.sock
"$daemon" --socket "$sock" --metrics-address none --backends fake,null --tracing off --log-level warn \
    2>"$dir/daemon.log" &
pid=$!
# coiommud renames its socket into place once it listens: the file means "connect now".
listening() { [ -S "$sock" ]; }
for ((i = 0; i < 1000; i++)); do
    listening && break
    kill -0 "$pid" 2>/dev/null || fail "coiommud exited before listening"
    sleep 0.01
done
listening || fail "coiommud does not listen on $sock after 10 s"

status=0
timeout 60 "$example" "$sock" "$vcpus" >"$dir/out" 2>"$dir/err" || status=$?
cat "$dir/out"
((status == 0)) || fail "$example exited $status"
grep -Eq '^coiommu-vmm-example: library [0-9]+\.[0-9]+\.[0-9]+, protocol 1, session [0-9]+' "$dir/out" ||
    fail "no Hello line"
grep -q "^coiommu-vmm-example: $vcpus pages pinned through the notify slots" "$dir/out" || fail "no pin line"
grep -q "^coiommu-vmm-example: balloon over gfn 0x800 +$vcpus: success" "$dir/out" || fail "no balloon line"
grep -Eq '^coiommu-vmm-example: OK: session [0-9]+ closed, dma_entries_after=0 ' "$dir/out" || fail "no OK line"
[[ ! -s $dir/err ]] || fail "the example wrote to stderr"

kill -TERM "$pid"
rc=0
wait "$pid" || rc=$?
pid=
((rc == 0)) || fail "coiommud exited $rc after SIGTERM"
grep -qi 'error' "$dir/daemon.log" && fail "coiommud logged an error"
echo "PASS: $example against coiommud"
