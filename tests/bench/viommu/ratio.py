#!/usr/bin/env python3
"""Interleaved rounds of two viommu_bench binaries: the add+remove cost at 10^6 live mappings
divided by the cost at 10^3, per binary, as medians with their spread.

Each round runs every binary once (in the order given), so that a noisy neighbour slows both
alike; the ratio is taken within one run of one binary, never across runs. CPU time, not wall
time: on shared vCPUs the wall clock also counts the time other tenants held the CPU.

    tests/bench/viommu/ratio.py --bin before=/tmp/viommu_bench.old \\
        --bin after=build/hvio/tests/bench/viommu/viommu_bench --rounds 7
"""

import argparse
import json
import statistics
import subprocess
import sys

FAMILIES = ("BM_AddRemove", "BM_AddRemoveShuffled")
SMALL, LARGE = 1000, 1000000


def run_once(binary, min_time):
    pattern = "^({})/({}|{})$".format("|".join(FAMILIES), SMALL, LARGE)
    out = subprocess.run(
        [binary, "--benchmark_filter=" + pattern, "--benchmark_format=json", "--benchmark_min_time={}".format(min_time)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    times = {}
    for b in json.loads(out)["benchmarks"]:
        family, n = b["name"].split("/")
        assert b["time_unit"] == "ns", b["time_unit"]
        times[(family, int(n))] = b["cpu_time"]
    return times


def spread(values):
    return "median {:7.2f}  min {:7.2f}  max {:7.2f}".format(statistics.median(values), min(values), max(values))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", action="append", required=True, metavar="NAME=PATH", help="a binary to run (repeat)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--min-time", type=float, default=0.5, help="--benchmark_min_time per case, seconds")
    args = ap.parse_args()
    bins = [b.split("=", 1) for b in args.bin]
    runs = {name: [] for name, _ in bins}
    for r in range(args.rounds):
        for name, path in bins:
            runs[name].append(run_once(path, args.min_time))
            t = runs[name][-1]
            print(
                "round {} {:>8}: ".format(r + 1, name)
                + "  ".join(
                    "{} {:.0f}/{:.0f} ns = {:.2f}".format(f, t[(f, SMALL)], t[(f, LARGE)], t[(f, LARGE)] / t[(f, SMALL)])
                    for f in FAMILIES
                ),
                file=sys.stderr,
            )
    for f in FAMILIES:
        print(f)
        for name, _ in bins:
            small = [t[(f, SMALL)] for t in runs[name]]
            large = [t[(f, LARGE)] for t in runs[name]]
            ratio = [t[(f, LARGE)] / t[(f, SMALL)] for t in runs[name]]
            print("  {:>8} 10^3 ns  {}".format(name, spread(small)))
            print("  {:>8} 10^6 ns  {}".format(name, spread(large)))
            print("  {:>8} ratio    {}".format(name, spread(ratio)))


if __name__ == "__main__":
    main()
