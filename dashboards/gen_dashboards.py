#!/usr/bin/env python3
"""Generates the Grafana dashboards of coiommu (classic JSON model, schemaVersion 36) and the
panel -> metric table of dashboards/README.md. Python 3 standard library only.

    dashboards/gen_dashboards.py            rewrite grafana/*.json and the README table
    dashboards/gen_dashboards.py --check    exit 1 if any of them differs from what would be written

The committed JSON is this script's output (tests/unit/dashboards checks that they are equal), so
edit the panels here, run the script, and commit both.

Conventions (the rules of grafana/dashboard-linter, which is not packaged): a `datasource`
variable (type datasource, query prometheus) used by every panel and target; `job`, `instance`
and `vm` query variables (multi, include All, allValue ".+"); every selector carries
{job=~"$job",instance=~"$instance"}, and a selector of a per-VM family (exporter/METRICS.md lists
it with the `vm` label) also vm=~"$vm", and inside rate()/increase() vm!="(ended)" (the ended
VMs' totals jump when a session ends: not a rate); counters and histogram buckets only inside
rate()/increase() over [$__rate_interval]; every panel has a title, a description and a unit;
heatmaps take `sum by (le) (increase(x_bucket[...]))` with format heatmap and no client-side
calculation. Per-VM lines group by (instance, vm): a VM's name is unique on its host only.
"""

import argparse
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

DS = {"type": "prometheus", "uid": "${datasource}"}
RI = "[$__rate_interval]"
# Extra matchers (kept out of f-string expressions: no backslashes there before Python 3.12).
FAILED = 'result="failed"'
NOT_OK = 'result!="ok"'
BPF_COLLECTOR = 'collector="bpf"'
OP_MAP = 'op="map"'


def per_vm_families():
    """The families exporter/METRICS.md lists with the `vm` label."""
    with open(os.path.join(HERE, "..", "exporter", "METRICS.md"), encoding="utf-8") as f:
        rows = re.findall(r"^\| `([a-z_][a-z0-9_]*)` \| [^|]+ \| ([^|]*)\|", f.read(), re.M)
    return {name for name, labels in rows if "`vm`" in labels}


PER_VM = per_vm_families()
ENDED = 'vm!="(ended)"'
VM = "instance, vm"  # per-VM grouping: a VM's name is unique on its host only


def is_per_vm(metric):
    for suffix in ("_bucket", "_count", "_sum"):
        if metric.endswith(suffix) and metric[: -len(suffix)] in PER_VM:
            return True
    return metric in PER_VM


def sel(extra="", metric="", in_rate=False):
    """The label matchers every target carries (and vm ones for a per-VM metric), plus extra ones."""
    matchers = ['job=~"$job"', 'instance=~"$instance"']
    if is_per_vm(metric):
        matchers.append('vm=~"$vm"')
        if in_rate:
            matchers.append(ENDED)
    if extra:
        matchers.append(extra)
    return "{" + ",".join(matchers) + "}"


def g(metric, extra=""):
    """A gauge selector."""
    return f"{metric}{sel(extra, metric)}"


def rate(metric, extra="", fn="rate"):
    return f"{fn}({metric}{sel(extra, metric, in_rate=True)}{RI})"


def quantile(q, metric, by, extra=""):
    """histogram_quantile over a classic histogram, aggregated by `by` (plus le)."""
    groups = ", ".join(["le"] + by)
    return f"histogram_quantile({q}, sum by ({groups}) ({rate(metric + '_bucket', extra)}))"


def heat(metric, extra=""):
    return f"sum by (le) ({rate(metric + '_bucket', extra, 'increase')})"


def target(expr, legend="", fmt=None):
    t = {"datasource": DS, "expr": expr, "legendFormat": legend, "range": True, "instant": False}
    if fmt:
        t["format"] = fmt
    return t


def timeseries(title, description, unit, targets, w=12, h=8, stack=False, min0=True):
    custom = {
        "drawStyle": "line",
        "lineWidth": 1,
        "fillOpacity": 10,
        "showPoints": "never",
        "spanNulls": False,
        "stacking": {"mode": "normal" if stack else "none", "group": "A"},
    }
    defaults = {"unit": unit, "custom": custom}
    if min0:
        defaults["min"] = 0
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DS,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "targets": targets,
        "_w": w,
        "_h": h,
    }


def heatmap(title, description, expr, w=12, h=8):
    return {
        "type": "heatmap",
        "title": title,
        "description": description,
        "datasource": DS,
        "fieldConfig": {
            "defaults": {
                "unit": "s",
                "custom": {
                    "hideFrom": {"legend": False, "tooltip": False, "viz": False},
                    "scaleDistribution": {"type": "linear"},
                },
            },
            "overrides": [],
        },
        "options": {
            "calculate": False,
            "cellGap": 1,
            "color": {"mode": "scheme", "scheme": "Oranges", "scale": "exponential", "exponent": 0.5,
                      "steps": 64, "fill": "dark-orange", "reverse": False},
            "exemplars": {"color": "rgba(255,0,255,0.7)"},
            "filterValues": {"le": 1e-9},
            "legend": {"show": True},
            "rowsFrame": {"layout": "auto"},
            "tooltip": {"show": True, "yHistogram": False},
            "yAxis": {"axisPlacement": "left", "reverse": False, "unit": "s"},
        },
        "targets": [target(expr, "{{le}}", "heatmap")],
        "_w": w,
        "_h": h,
    }


def single(kind, title, description, unit, targets, w=6, h=8, thresholds=None, mappings=None, minmax=None):
    steps = [{"color": "green", "value": None}]
    for value, color in (thresholds or []):
        steps.append({"color": color, "value": value})
    defaults = {"unit": unit, "thresholds": {"mode": "absolute", "steps": steps}, "mappings": mappings or []}
    if minmax:
        defaults["min"], defaults["max"] = minmax
    options = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}, "orientation": "auto"}
    if kind == "stat":
        options.update({"colorMode": "background", "graphMode": "none", "justifyMode": "auto", "textMode": "auto"})
    else:
        options.update({"showThresholdLabels": False, "showThresholdMarkers": True})
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": options,
        "targets": targets,
        "_w": w,
        "_h": h,
    }


def row(title):
    return {"type": "row", "title": title, "collapsed": False, "panels": [], "_w": 24, "_h": 1}


ON_OFF = [{"type": "value", "options": {"0": {"text": "no", "color": "green"}, "1": {"text": "yes", "color": "orange"}}}]
ATTACHED = [{"type": "value", "options": {"0": {"text": "DETACHED", "color": "red"}, "1": {"text": "attached", "color": "green"}}}]

# ---------------------------------------------------------------------------------------------
# Overview: the engine (exporter collectors "engine", "process" and the set's own metrics).

OVERVIEW = [
    row("Pinning"),
    timeseries("Pin requests", "Guest pin requests (notifications) handled per second, per VM and kind: single "
               "page or batch (coiommu_pin_requests_total).", "reqps",
               [target(f"sum by ({VM}, kind) ({rate('coiommu_pin_requests_total')})", "{{vm}} {{kind}}")], w=8),
    timeseries("Pages pinned and unpinned", "Pages newly pinned and DMA-mapped, unpinned and DMA-unmapped, and "
               "requested while already pinned, per second and VM.", "suffix: pages/s",
               [target(f"sum by ({VM}) ({rate('coiommu_pages_pinned_total')})", "pinned {{vm}}"),
                target(f"sum by ({VM}) ({rate('coiommu_pages_unpinned_total')})", "unpinned {{vm}}"),
                target(f"sum by ({VM}) ({rate('coiommu_pages_already_pinned_total')})", "already pinned {{vm}}")],
               w=8),
    single("gauge", "Pinned share of guest RAM", "Guest memory pinned now as a share of the guest RAM registered "
           "with the engines (coiommu_pinned_bytes / coiommu_guest_ram_bytes), over the selected instances and VMs.",
           "percentunit", [target(f"sum({g('coiommu_pinned_bytes')}) / sum({g('coiommu_guest_ram_bytes')})")],
           w=8, thresholds=[(0.8, "orange"), (0.95, "red")], minmax=(0, 1)),
    timeseries("Pinned memory vs guest RAM", "Guest memory pinned now (coiommu_pinned_bytes) against the guest "
               "RAM registered with the engine (coiommu_guest_ram_bytes), per VM.", "bytes",
               [target(f"sum by ({VM}) ({g('coiommu_pinned_bytes')})", "pinned {{vm}} {{instance}}"),
                target(f"sum by ({VM}) ({g('coiommu_guest_ram_bytes')})", "guest RAM {{vm}} {{instance}}")]),
    timeseries("DMA entries vs limit", "Live mappings in each VM's DMA backend (VFIO type1 DMA entries in use) "
               "against that backend's limit (vfio_iommu_type1.dma_entry_limit, per container); maps beyond it "
               "fail with ENOSPC.", "short",
               [target(f"sum by ({VM}) ({g('coiommu_dma_mappings')})", "entries {{vm}} {{instance}}"),
                target(f"sum by ({VM}) ({g('coiommu_dma_entry_limit')})", "limit {{vm}} {{instance}}")], w=8),
    single("gauge", "DMA entries used", "Highest share of its DMA entry limit any selected VM uses "
           "(coiommu_dma_mappings / coiommu_dma_entry_limit); the CoiommuDmaEntriesNearLimit alert fires above 90%.",
           "percentunit", [target(f"max({g('coiommu_dma_mappings')} / ({g('coiommu_dma_entry_limit')} > 0))")],
           w=4, thresholds=[(0.8, "orange"), (0.9, "red")], minmax=(0, 1)),
    row("Failures and faults"),
    timeseries("Pin failure ratio", "Share of the pages a VM's guest asked to pin that could not be pinned, per "
               "VM and reason (coiommu_pin_failures_total / coiommu_pin_attempts_total); the "
               "CoiommuPinFailureRatioHigh alert fires for a VM above 1%.", "percentunit",
               [target(f"sum by ({VM}, reason) ({rate('coiommu_pin_failures_total')}) / ignoring (reason) "
                       f"group_left sum by ({VM}) ({rate('coiommu_pin_attempts_total')})", "{{vm}} {{reason}}")]),
    timeseries("Failure and fault rates", "Failures per second over the selected VMs: DMA maps the guest saw fail "
               "(CoIOMMU and virtio-iommu), failed DMA backend calls by op, virtio-iommu fault events, failed "
               "balloon requests.", "ops",
               [target(f"sum by (iommu) ({rate('coiommu_guest_dma_map_failures_total')})", "guest map failures {{iommu}}"),
                target(f"sum by (op) ({rate('coiommu_dma_call_failures_total')})", "DMA {{op}} call failures"),
                target(f"sum({rate('coiommu_viommu_fault_events_total')})", "virtio-iommu fault events"),
                target(f"sum({rate('coiommu_balloon_requests_total', FAILED)})", "balloon failures")]),
    row("Latency"),
    timeseries("Pin request latency p50 / p99", "Time from a pin request's notification to its completion, "
               "50th and 99th percentile by kind over the selected VMs (coiommu_pin_request_duration_seconds); "
               "select one VM for its own.", "s",
               [target(quantile(0.5, "coiommu_pin_request_duration_seconds", ["kind"]), "p50 {{kind}}"),
                target(quantile(0.99, "coiommu_pin_request_duration_seconds", ["kind"]), "p99 {{kind}}")]),
    heatmap("Pin request latency", "Distribution of pin request latency over time, every kind and selected VM "
            "(coiommu_pin_request_duration_seconds buckets).", heat("coiommu_pin_request_duration_seconds")),
    timeseries("DMA call latency p50 / p99", "Latency of one DMA backend call (a VFIO MAP_DMA/UNMAP_DMA ioctl "
               "for the vfio backend), 50th and 99th percentile by op over the selected VMs "
               "(coiommu_dma_call_duration_seconds).", "s",
               [target(quantile(0.5, "coiommu_dma_call_duration_seconds", ["op"]), "p50 {{op}}"),
                target(quantile(0.99, "coiommu_dma_call_duration_seconds", ["op"]), "p99 {{op}}")]),
    heatmap("DMA map call latency", "Distribution of DMA map call latency over time, every selected VM "
            "(coiommu_dma_call_duration_seconds buckets, op=map).",
            heat("coiommu_dma_call_duration_seconds", 'op="map"')),
    timeseries("DMA calls", "DMA backend calls per second, per VM and op (a coalesced extent is one call).",
               "ops", [target(f"sum by ({VM}, op) ({rate('coiommu_dma_calls_total')})", "{{vm}} {{op}}")], w=8),
    timeseries("DMA bytes", "Bytes mapped and unmapped per second by successful DMA calls, per VM and op.", "Bps",
               [target(f"sum by ({VM}, op) ({rate('coiommu_dma_bytes_total')})", "{{vm}} {{op}}")], w=8),
    timeseries("Pages per request p50 / p99", "Pages named by each pin request, 50th and 99th percentile over "
               "the selected VMs (coiommu_pages_per_request).", "short",
               [target(quantile(0.5, "coiommu_pages_per_request", []), "p50"),
                target(quantile(0.99, "coiommu_pages_per_request", []), "p99")], w=8),
    row("Queue and unpinning"),
    timeseries("Pin queue depth", "Pin requests waiting for a worker, per VM (coiommu_pin_queue_depth).", "short",
               [target(f"max by ({VM}) ({g('coiommu_pin_queue_depth')})", "{{vm}} {{instance}}")], w=8),
    timeseries("Unpin outcomes", "Pages examined by unpin scans per second over the selected VMs, by outcome "
               "(crosvm's UnpinResult: unpinned, not_pinned, not_unpinned = still in use, failed, parked).",
               "suffix: pages/s",
               [target(f"sum by (result) ({rate('coiommu_unpin_attempts_total')})", "{{result}}")], w=8),
    timeseries("Unpin scan duration p99", "99th percentile duration of one unpin scan over the selected VMs, by "
               "kind (LRU timer or balloon request).", "s",
               [target(quantile(0.99, "coiommu_unpin_scan_duration_seconds", ["kind"]), "p99 {{kind}}")], w=8),
    single("stat", "Time since the last unpin scan", "Seconds since each VM's last unpin scan finished "
           "(time() - coiommu_unpin_last_run_timestamp_seconds; a VM that has not scanned yet is not shown); "
           "CoiommuUnpinStalled fires for a VM past 3 unpin intervals.", "s",
           [target(f"time() - (max by ({VM}) ({g('coiommu_unpin_last_run_timestamp_seconds')}) > 0)",
                   "{{vm}} {{instance}}")],
           w=8, h=5, thresholds=[(180, "orange"), (600, "red")]),
    single("stat", "Unpin worker parked", "Whether each VM's guest has parked its unpin worker (PARK_UNPIN) "
           "(coiommu_unpin_worker_parked).", "none",
           [target(f"max by ({VM}) ({g('coiommu_unpin_worker_parked')})", "{{vm}} {{instance}}")],
           w=8, h=5, mappings=ON_OFF),
    single("stat", "vCPUs served", "vCPUs (notify slots) the engine serves, per VM (coiommu_vcpus).",
           "short", [target(f"sum by ({VM}) ({g('coiommu_vcpus')})", "{{vm}} {{instance}}")], w=8, h=5),
    row("Daemon: sessions and connections (coiommud)"),
    timeseries("Sessions", "VMM sessions served now (coiommu_active_sessions), and sessions started, resumed "
               "after a daemon restart, ended, and ended by an error, per second. A resumed session is a VM that "
               "survived its daemon's restart; CoiommuSessionsFailing fires on failed ones.", "short",
               [target(f"sum by (instance) ({g('coiommu_active_sessions')})", "active {{instance}}"),
                target(f"sum by (instance) ({rate('coiommu_sessions_accepted_total')})", "accepted/s {{instance}}"),
                target(f"sum by (instance) ({rate('coiommu_sessions_resumed_total')})", "resumed/s {{instance}}"),
                target(f"sum by (instance) ({rate('coiommu_sessions_ended_total')})", "ended/s {{instance}}"),
                target(f"sum by (instance) ({rate('coiommu_sessions_failed_total')})", "failed/s {{instance}}")]),
    timeseries("Connections refused", "Connections coiommud closed without serving, per second and reason "
               "(coiommu_connections_refused_total): capacity (busy, uid_busy, fd_budget, out_of_fds) warns as "
               "CoiommuConnectionsRefused; credentials and the handshake reasons are a misbehaving client. "
               "Accept pauses: the daemon was at its fd limit (coiommu_accept_pauses_total).", "ops",
               [target(f"sum by (instance, reason) ({rate('coiommu_connections_refused_total')})",
                       "{{reason}} {{instance}}"),
                target(f"sum by (instance) ({rate('coiommu_accept_pauses_total')})", "accept pauses {{instance}}")]),
    row("Exporter and process"),
    timeseries("Collector duration", "Time the last scrape spent in each collector "
               "(coiommu_exporter_collect_duration_seconds).", "s",
               [target(f"max by (collector) (coiommu_exporter_collect_duration_seconds{sel()})", "{{collector}}")],
               w=8),
    timeseries("Process CPU", "CPU time the engine process uses per second, user + system "
               "(process_cpu_seconds_total).", "percentunit",
               [target(f"sum by (instance) ({rate('process_cpu_seconds_total')})", "{{instance}}")], w=8),
    timeseries("Process memory", "Resident memory, and locked memory against its limit (VFIO type1 charges "
               "pinned pages to the process's locked memory).", "bytes",
               [target(f"sum by (instance) (process_resident_memory_bytes{sel()})", "resident {{instance}}"),
                target(f"sum by (instance) (coiommu_process_locked_memory_bytes{sel()})", "locked {{instance}}")],
               w=8),
]

# ---------------------------------------------------------------------------------------------
# Kernel view: the BPF collector (coiommu-trace --exporter, or the engine with the tracer).

BPF_OPS = 'op=~"map|ioas_map"'
BPF_UNOPS = 'op=~"unmap|ioas_unmap"'

KERNEL = [
    row("VFIO DMA ioctl latency (VFIO handler fentry or syscall tracepoints)"),
    heatmap("Map latency", "Distribution over time of the latency of VFIO_IOMMU_MAP_DMA and iommufd IOAS_MAP "
            "ioctls: fentry to fexit of the VFIO ioctl handler, or sys_enter to sys_exit of the ioctl in "
            "tracepoint mode (coiommu_bpf_program_info's attach label says which; "
            "coiommu_bpf_dma_duration_seconds buckets).",
            heat("coiommu_bpf_dma_duration_seconds", BPF_OPS)),
    heatmap("Unmap latency", "Distribution over time of the latency of VFIO_IOMMU_UNMAP_DMA and iommufd "
            "IOAS_UNMAP ioctls (coiommu_bpf_dma_duration_seconds buckets).",
            heat("coiommu_bpf_dma_duration_seconds", BPF_UNOPS)),
    timeseries("Latency p99 by op", "99th percentile ioctl latency by op (map, unmap: VFIO type1; ioas_map, "
               "ioas_unmap: iommufd); CoiommuDmaMapLatencyHigh fires when the map p99 stays above 10 ms.", "s",
               [target(quantile(0.99, "coiommu_bpf_dma_duration_seconds", ["op"]), "p99 {{op}}")]),
    timeseries("Latency p50 by op", "Median ioctl latency by op (coiommu_bpf_dma_duration_seconds).", "s",
               [target(quantile(0.5, "coiommu_bpf_dma_duration_seconds", ["op"]), "p50 {{op}}")]),
    row("Calls and result classes"),
    timeseries("Calls by op and result", "Map/unmap ioctls per second by op and result class of the return "
               "value (ok, eexist, enospc = DMA entry limit, enomem = locked-memory limit, einval, other).", "ops",
               [target(f"sum by (op, result) ({rate('coiommu_bpf_dma_calls_total')})", "{{op}} {{result}}")], w=8),
    timeseries("Failed call ratio", "Share of the map/unmap ioctls that returned an error, by op.", "percentunit",
               [target(f"sum by (op) ({rate('coiommu_bpf_dma_calls_total', NOT_OK)}) / "
                       f"sum by (op) ({rate('coiommu_bpf_dma_calls_total')})", "{{op}}")], w=8),
    timeseries("Bytes requested", "Bytes named by map/unmap ioctls per second (their size/length argument), by op.",
               "Bps", [target(f"sum by (op) ({rate('coiommu_bpf_dma_bytes_total')})", "{{op}}")], w=8),
    timeseries("Slow events", "Ioctls at or above the slow threshold per second (ring-buffer events received "
               "plus lost), per instance (coiommu_bpf_slow_events_total).", "ops",
               [target(f"sum by (instance) ({rate('coiommu_bpf_slow_events_total')})", "{{instance}}")], w=8),
    timeseries("Events lost", "Observations the BPF programs could not record per second, by the map that was "
               "full; CoiommuBpfEventsLost fires on any.", "ops",
               [target(f"sum by (map) ({rate('coiommu_bpf_events_lost_total')})", "{{map}}")], w=8),
    timeseries("Calls in flight", "Ioctls between their entry and exit hooks (fentry/fexit, or sys_enter/sys_exit "
               "in tracepoint mode) at scrape time (coiommu_bpf_dma_calls_in_flight).", "short",
               [target(f"sum by (instance) (coiommu_bpf_dma_calls_in_flight{sel()})", "{{instance}}")], w=8),
    row("BPF program health"),
    single("stat", "Programs attached", "Whether each BPF program is attached to its hook "
           "(coiommu_bpf_program_attached); CoiommuBpfProgramDetached fires on a detached one.", "none",
           [target(f"min by (program) (coiommu_bpf_program_attached{sel()})", "{{program}}")], w=8, mappings=ATTACHED),
    timeseries("Program CPU", "Kernel CPU time spent in each BPF program per second; needs BPF run-time stats "
               "(coiommu-trace --stats or kernel.bpf_stats_enabled=1).", "percentunit",
               [target(f"sum by (program) ({rate('coiommu_bpf_program_run_seconds_total')})", "{{program}}")], w=8),
    timeseries("Average run time", "Average time per run of each BPF program (run time / runs); empty for "
               "programs that did not run and while run-time stats are off.", "s",
               [target(f"sum by (program) ({rate('coiommu_bpf_program_run_seconds_total')}) / "
                       f"sum by (program) ({rate('coiommu_bpf_program_runs_total')})", "{{program}}")], w=8),
    timeseries("BPF collector", "Time the last scrape spent reading the BPF maps, and whether it was complete "
               "(1) or failed (0).", "s",
               [target(f"max by (instance) (coiommu_exporter_collect_duration_seconds{sel(BPF_COLLECTOR)})",
                       "duration {{instance}}")], w=12),
    single("stat", "BPF collector success", "1 if the last scrape read every BPF map "
           "(coiommu_exporter_collector_success{collector=\"bpf\"}).", "none",
           [target(f"min by (instance) (coiommu_exporter_collector_success{sel(BPF_COLLECTOR)})", "{{instance}}")],
           w=12, mappings=[{"type": "value", "options": {"0": {"text": "FAILED", "color": "red"},
                                                        "1": {"text": "ok", "color": "green"}}}]),
    row("Engine through its USDT probes (when attached)"),
    timeseries("DMA map p99: engine vs kernel", "99th percentile DMA map latency as the engines of the selected "
               "VMs measured it (their own coiommu_dma_call_duration_seconds, not a USDT probe: the loader never "
               "attaches the per-call ones) and as the kernel saw the MAP_DMA ioctls of the whole process (the "
               "vfio_dma program, fentry or tracepoint mode).", "s",
               [target(quantile(0.99, "coiommu_dma_call_duration_seconds", [], 'op="map"'), "engine"),
                target(quantile(0.99, "coiommu_bpf_dma_duration_seconds", [], 'op="map"'), "kernel (ioctl)")]),
    timeseries("Engine request latency p99 (USDT)", "99th percentile pin request latency by kind from the "
               "engine's request_done probe (one hit per request, carrying the engine's own latency).", "s",
               [target(quantile(0.99, "coiommu_bpf_engine_request_duration_seconds", ["kind"]), "p99 {{kind}}")]),
]


VM_METRIC = "coiommu_pinned_pages"  # the vm variable's values


def variables(job_metric):
    def query_var(name, query):
        return {
            "name": name,
            "label": name,
            "type": "query",
            "datasource": DS,
            # No "definition" (the display copy of the query that Grafana's editor writes): it is
            # not in Grafana's dashboard schema (@grafana/schema VariableModel, checked by
            # tests/unit/dashboards/schema), and the query itself is query.query.
            "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
            "refresh": 2,
            "multi": True,
            "includeAll": True,
            "allValue": ".+",
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
            "options": [],
            "regex": "",
            "sort": 1,
            "hide": 0,
        }

    return [
        {
            "name": "datasource",
            "label": "datasource",
            "type": "datasource",
            "query": "prometheus",
            # No "current": Grafana then selects the default Prometheus data source. The schema's
            # VariableOption needs text and value, so the former empty {} did not conform.
            "options": [],
            "refresh": 1,
            "regex": "",
            "hide": 0,
        },
        query_var("job", f"label_values({job_metric}, job)"),
        query_var("instance", f'label_values({job_metric}{{job=~"$job"}}, instance)'),
        # A gauge: it has a series for every VM served and none for the ended VMs' "(ended)".
        query_var("vm", f'label_values({VM_METRIC}{{job=~"$job",instance=~"$instance"}}, vm)'),
    ]


def layout(panels):
    """Assigns ids and gridPos: panels flow left to right in 24 columns; a row starts a new line."""
    out = []
    x = y = line_h = 0
    for pid, p in enumerate(panels, start=1):
        p = dict(p)
        w, h = p.pop("_w"), p.pop("_h")
        if p["type"] == "row" or x + w > 24:
            y += line_h
            x = line_h = 0
        p = {"id": pid, "gridPos": {"h": h, "w": w, "x": x, "y": y}, **p}
        for i, t in enumerate(p.get("targets", [])):
            t["refId"] = chr(ord("A") + i)
        out.append(p)
        x += w
        line_h = max(line_h, h)
        if p["type"] == "row":
            y += h
            x = line_h = 0
    return out


def dashboard(uid, title, description, tags, panels, job_metric, links):
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": tags,
        "schemaVersion": 36,
        "version": 1,
        "editable": False,
        "graphTooltip": 1,
        "timezone": "",
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "weekStart": "",
        "annotations": {"list": [{
            "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True,
            "hide": True, "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts", "type": "dashboard"}]},
        "links": links,
        "templating": {"list": variables(job_metric)},
        "panels": layout(panels),
    }


def link(title, uid):
    return {"title": title, "type": "link", "url": f"/d/{uid}", "icon": "dashboard", "tooltip": "",
            "asDropdown": False, "includeVars": True, "keepTime": True, "tags": [], "targetBlank": False}


DASHBOARDS = {
    "grafana/coiommu-overview.json": dashboard(
        "coiommu-overview", "coiommu / Overview",
        "The CoIOMMU pin engine: pin/unpin rates, pinned memory vs guest RAM, DMA entries vs limit, failures, "
        "request and DMA latency, queue depth, unpinning, exporter health. Metrics: exporter/METRICS.md.",
        ["coiommu", "vfio"], OVERVIEW, "coiommu_build_info", [link("coiommu / Kernel view", "coiommu-kernel")]),
    "grafana/coiommu-kernel.json": dashboard(
        "coiommu-kernel", "coiommu / Kernel view",
        "VFIO DMA map/unmap ioctls as the kernel sees them (BPF fentry on the VFIO ioctl handlers, or the ioctl "
        "syscall tracepoints: coiommu-trace --vfio-mode): latency "
        "heatmaps and p99 by op, result classes, slow events, BPF program health. Served by the engine with the "
        "tracer attached, or by coiommu-trace --exporter on crosvm/QEMU hosts.",
        ["coiommu", "vfio", "bpf"], KERNEL, "coiommu_bpf_program_info", [link("coiommu / Overview", "coiommu-overview")]),
}


def render(obj):
    return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"


# ---------------------------------------------------------------------------------------------
# The README's panel -> metric table.

README_BEGIN = "<!-- panels:begin (generated by gen_dashboards.py) -->"
README_END = "<!-- panels:end -->"


def panel_metrics(panel):
    import re
    names = set()
    for t in panel.get("targets", []):
        for m in re.finditer(r"\b(coiommu_[a-z0-9_]+|process_[a-z0-9_]+)", t["expr"]):
            n = m.group(1)
            for suffix in ("_bucket",):
                if n.endswith(suffix):
                    n = n[: -len(suffix)]
            names.add(n)
    return sorted(names)


def readme_table():
    lines = [README_BEGIN]
    for path, d in DASHBOARDS.items():
        lines += ["", f"### `{path}` — {d['title']} (uid `{d['uid']}`)", "",
                  "| panel | type | unit | metrics |", "|---|---|---|---|"]
        section = ""
        for p in d["panels"]:
            if p["type"] == "row":
                section = p["title"]
                lines.append(f"| **{section}** | | | |")
                continue
            unit = p["fieldConfig"]["defaults"]["unit"]
            metrics = ", ".join(f"`{m}`" for m in panel_metrics(p))
            lines.append(f"| {p['title']} | {p['type']} | `{unit}` | {metrics} |")
    lines.append(README_END)
    return "\n".join(lines)


def readme_with_table(text):
    begin, end = text.index(README_BEGIN), text.index(README_END) + len(README_END)
    return text[:begin] + readme_table() + text[end:]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 on a difference")
    ap.add_argument("--out", default=HERE, help="dashboards directory (default: this script's)")
    args = ap.parse_args()
    wanted = {os.path.join(args.out, p): render(d) for p, d in DASHBOARDS.items()}
    readme = os.path.join(args.out, "README.md")
    with open(readme, encoding="utf-8") as f:
        wanted[readme] = readme_with_table(f.read())
    stale = []
    for path, text in wanted.items():
        current = None
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                current = f.read()
        if current == text:
            continue
        stale.append(path)
        if not args.check:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
    if args.check and stale:
        for p in stale:
            print(f"{os.path.relpath(p)} differs from gen_dashboards.py's output: run dashboards/gen_dashboards.py",
                  file=sys.stderr)
        return 1
    for p in stale:
        print(f"wrote {os.path.relpath(p)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
