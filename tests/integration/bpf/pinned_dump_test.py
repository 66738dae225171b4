#!/usr/bin/env python3
"""coiommu-trace --pin, then bpftool -j map dump pinned and scripts/bpf-latency.sh, compared.

1. Runs `coiommu-trace --vfio-mode tracepoint --pin --json -p <this pid> 0.2` under a private pin
   root, issues N real VFIO_IOMMU_MAP_DMA and M UNMAP_DMA ioctls on /dev/null (ENOTTY, but the
   syscall tracepoints fire; in fentry mode, on a host with VFIO, no VFIO handler would see them),
   reads the CLI's JSON intervals, stops it with SIGINT.
2. The pins must survive the CLI (--pin keeps them); `bpftool -j map dump pinned` of the
   histogram and calls maps, summed over CPUs, must equal what the CLI reported (counts, sum,
   buckets, bytes, result classes).
3. scripts/bpf-latency.sh dump (text and --json) must show the same counts.
4. --pin-temp pins while running and removes the pins on SIGTERM.
Exit 77 (ctest skip) only when this process cannot use BPF at all, saying why.
"""
import argparse
import fcntl
import json
import os
import select
import shutil
import signal
import struct
import subprocess
import sys
import time

VFIO_IOMMU_MAP_DMA = 0x3B71
VFIO_IOMMU_UNMAP_DMA = 0x3B72
PAGE = 4096
N_MAP, M_UNMAP = 6, 4
FAILURES = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        FAILURES.append(what)


def can_trace():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                caps = int(line.split()[1], 16)
                return bool(caps >> 21 & 1) or (bool(caps >> 39 & 1) and bool(caps >> 38 & 1))
    return False


def issue_ioctls():
    fd = os.open("/dev/null", os.O_RDONLY)
    sizes = []
    for i in range(N_MAP):
        size = PAGE * (i + 1)
        sizes.append(size)
        buf = bytearray(struct.pack("<IIQQQ", 32, 3, 0x7F0000000000, 0x100000 + i * 0x10000, size))
        try:
            fcntl.ioctl(fd, VFIO_IOMMU_MAP_DMA, buf)
        except OSError:
            pass  # ENOTTY: /dev/null is not a VFIO container
    for _ in range(M_UNMAP):
        buf = bytearray(struct.pack("<IIQQ", 24, 0, 0x100000, 2 * PAGE))
        try:
            fcntl.ioctl(fd, VFIO_IOMMU_UNMAP_DMA, buf)
        except OSError:
            pass
    os.close(fd)
    return sum(sizes), M_UNMAP * 2 * PAGE


class LineReader:
    """Lines from a pipe with a timeout (select on the fd; no hidden buffering)."""

    def __init__(self, pipe):
        self.fd = pipe.fileno()
        self.buf = b""
        self.eof = False

    def readline(self, deadline):
        while b"\n" not in self.buf:
            if self.eof:
                break
            left = deadline - time.time()
            if left <= 0:
                return None
            r, _, _ = select.select([self.fd], [], [], left)
            if not r:
                return None
            chunk = os.read(self.fd, 65536)
            if not chunk:
                self.eof = True
            self.buf += chunk
        if b"\n" not in self.buf:
            line, self.buf = self.buf, b""
            return line.decode() if line else None
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()

    def rest(self):
        while not self.eof:
            chunk = os.read(self.fd, 65536)
            if not chunk:
                self.eof = True
            self.buf += chunk
        out, self.buf = self.buf.decode(), b""
        return out


def wait_stderr(reader, needle, timeout=30.0):
    deadline = time.time() + timeout
    seen = ""
    while True:
        line = reader.readline(deadline)
        if line is None:
            raise RuntimeError(f"coiommu-trace never said {needle!r}; stderr so far:\n{seen}")
        seen += line + "\n"
        if needle in line:
            return seen


def read_json_lines(reader, until, timeout=10.0):
    lines = []
    deadline = time.time() + timeout
    while True:
        line = reader.readline(deadline)
        if line is None:
            return lines
        lines.append(json.loads(line))
        if until(lines[-1]):
            return lines


def bpftool_summed(bpftool, path):
    out = subprocess.run([bpftool, "-j", "map", "dump", "pinned", path], check=True,
                         capture_output=True, text=True).stdout
    result = {}
    for entry in json.loads(out):
        f = entry["formatted"]
        total = None
        for v in f["values"]:
            val = v["value"]
            if total is None:
                total = json.loads(json.dumps(val))
            else:
                for k, x in val.items():
                    total[k] = [a + b for a, b in zip(total[k], x)] if isinstance(x, list) else total[k] + x
        result[f["key"]] = total
    return result


def cli_buckets(lines, op):
    acc = {}
    for obj in lines:
        for b in obj["vfio_dma"]["ops"][op]["latency_ns"]["buckets"]:
            acc[str(b["le"])] = acc.get(str(b["le"]), 0) + b["count"]
    return acc


def remove_root(root):
    d = os.path.join(root, "v2")
    if os.path.isdir(d):
        for name in os.listdir(d):
            os.unlink(os.path.join(d, name))
        os.rmdir(d)
    if os.path.isdir(root):
        os.rmdir(root)


def kept_pins_scenario(args, root):
    cmd = [args.trace, "--vfio-mode", "tracepoint", "--pin", "--pin-root", root, "--json", "-p", str(os.getpid()),
           "0.2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = LineReader(proc.stdout), LineReader(proc.stderr)
        wait_stderr(err, "Tracing")
        map_bytes, unmap_bytes = issue_ioctls()
        lines = read_json_lines(out, lambda o: o["vfio_dma"]["ops"]["vfio_map_dma"]["since_start"]["count"] >= N_MAP and
                                o["vfio_dma"]["ops"]["vfio_unmap_dma"]["since_start"]["count"] >= M_UNMAP)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=10)
        lines += [json.loads(line) for line in out.rest().splitlines() if line.strip()]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    check(proc.returncode == 0, f"coiommu-trace exits 0 on SIGINT (got {proc.returncode})")
    check(len(lines) > 0, "coiommu-trace printed JSON intervals")
    if not lines:
        return
    check(all(o["vfio_dma"]["mode"] == "tracepoint" for o in lines), "every JSON interval names the tracepoint mode")
    last = lines[-1]["vfio_dma"]["ops"]
    cli_map, cli_unmap = last["vfio_map_dma"], last["vfio_unmap_dma"]
    check(cli_map["since_start"]["count"] == N_MAP,
          f"CLI counted {N_MAP} MAP_DMA calls (got {cli_map['since_start']['count']})")
    check(cli_unmap["since_start"]["count"] == M_UNMAP,
          f"CLI counted {M_UNMAP} UNMAP_DMA (got {cli_unmap['since_start']['count']})")
    check(sum(o["vfio_dma"]["ops"]["vfio_map_dma"]["count"] for o in lines) == N_MAP,
          "interval deltas add up to the total")

    pin_dir = os.path.join(root, "v2")
    check(os.path.exists(os.path.join(pin_dir, "vfio_dma_hist")), "--pin keeps the pins after exit")
    hist = bpftool_summed(args.bpftool, os.path.join(pin_dir, "vfio_dma_hist"))
    calls = bpftool_summed(args.bpftool, os.path.join(pin_dir, "vfio_dma_calls"))

    cli_hist = cli_map["latency_ns"]["since_start"]
    check(hist[0]["count"] == N_MAP == cli_hist["count"],
          f"bpftool map histogram count {hist[0]['count']} == CLI {cli_hist['count']}")
    check(hist[1]["count"] == M_UNMAP == cli_unmap["latency_ns"]["since_start"]["count"], "bpftool unmap count == CLI")
    check(hist[0]["sum"] == cli_hist["sum"], "bpftool latency sum == CLI since_start sum")
    check(sum(hist[0]["slots"]) == N_MAP, "bpftool slots add up to the count")
    bpftool_buckets = {str(1 << k) if k < len(hist[0]["slots"]) - 1 else "+Inf": c
                       for k, c in enumerate(hist[0]["slots"]) if c}
    check(bpftool_buckets == cli_buckets(lines, "vfio_map_dma"),
          f"bpftool buckets {bpftool_buckets} == CLI buckets {cli_buckets(lines, 'vfio_map_dma')}")
    check(calls[0]["other"] == N_MAP and calls[0]["ok"] == 0, "ENOTTY calls are class 'other'")
    check(calls[0]["bytes"] == map_bytes == cli_map["since_start"]["bytes"],
          f"bytes {calls[0]['bytes']} == requested {map_bytes} == CLI {cli_map['since_start']['bytes']}")
    check(calls[1]["bytes"] == unmap_bytes, "unmap bytes == requested")

    script = subprocess.run([args.script, "--pin-root", root, "--json", "dump", "vfio_dma_hist", "vfio_dma_calls"],
                            capture_output=True, text=True)
    check(script.returncode == 0, f"bpf-latency.sh --json dump exits 0 ({script.stderr.strip()})")
    if script.returncode == 0:
        dump = json.loads(script.stdout)
        check(dump["vfio_dma_hist"]["vfio_map_dma"]["count"] == N_MAP, "bpf-latency.sh JSON count == N")
        check(dump["vfio_dma_calls"]["vfio_unmap_dma"]["other"] == M_UNMAP, "bpf-latency.sh JSON calls == M")
    text = subprocess.run([args.script, "--pin-root", root, "--unit", "us", "dump"], capture_output=True, text=True)
    check(text.returncode == 0 and f"vfio_dma_hist[vfio_map_dma]: count {N_MAP}," in text.stdout and
          "distribution" in text.stdout, "bpf-latency.sh text dump renders the histogram")
    print(text.stdout)


def temp_pins_scenario(args, root):
    cmd = [args.trace, "--vfio-mode", "tracepoint", "--pin-temp", "--pin-root", root, "-p", str(os.getpid())]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out_reader, err = LineReader(proc.stdout), LineReader(proc.stderr)
        wait_stderr(err, "Tracing")
        check(os.path.exists(os.path.join(root, "v2", "vfio_dma_hist")), "--pin-temp pins while running")
        issue_ioctls()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
        out = out_reader.rest()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    check(proc.returncode == 0, f"coiommu-trace exits 0 on SIGTERM (got {proc.returncode})")
    check(f"op = vfio_map_dma: {N_MAP} calls" in out, "the final text report shows the calls")
    check("vfio_dma mode = tracepoint\n" in out, "the final text report names the mode")
    check(not os.path.exists(os.path.join(root, "v2")), "--pin-temp removes its pins on exit")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--trace", required=True)
    p.add_argument("--bpftool", default=shutil.which("bpftool") or "/usr/sbin/bpftool")
    p.add_argument("--script", required=True)
    args = p.parse_args()
    if not can_trace():
        print("SKIP: BPF tracing needs root or CAP_BPF+CAP_PERFMON; this process has neither")
        return 77
    root = f"/sys/fs/bpf/coiommu-dumptest-{os.getpid()}"
    try:
        kept_pins_scenario(args, root)
    finally:
        remove_root(root)
    try:
        temp_pins_scenario(args, root)
    finally:
        remove_root(root)
    print(f"{len(FAILURES)} failure(s)")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
