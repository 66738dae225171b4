#!/usr/bin/env python3
"""Checks coiommu's Grafana dashboards and Prometheus rules without a Grafana server
(Debian 12 packages none). Python 3 standard library only.

usage: check_dashboards.py [--root DIR] COMMAND
  structure   structural checks of every dashboard (grafana/dashboard-linter's rules and more):
              unique uids and panel ids; gridPos inside 24 columns, no overlap; the datasource,
              job, instance and vm variables; title, description, unit and the templated datasource
              on every panel; job/instance matchers on every selector, vm=~"$vm" on every selector
              of a per-VM family (METRICS.md lists it with `vm`) and vm!="(ended)" on those inside
              rate/irate/increase (in rules.yml too: the ended VMs' series jumps by a whole
              session's totals when one ends, so it is no rate); counters (_total, _bucket,
              _count, _sum) only inside rate/irate/increase, over [$__rate_interval]; heatmap
              targets; every metric referenced by a panel, a variable or rules.yml is documented
              in exporter/METRICS.md (exporter_test's MetricsDoc ties that file to what the
              collectors emit); every alert of rules.yml has a runbook_url pointing at its own
              section of dashboards/RUNBOOK.md (which exists, and no section lacks its alert),
              and at least one firing and one quiet (exp_alerts: []) case in rules_test.yml
  promql      every panel query, variables substituted, through `promtool check rules` as a
              recording rule; `promtool check rules` and `promtool test rules` on
              dashboards/prometheus; `promtool check config` on the scrape example (exit 77 when
              promtool is missing)
  generated   the committed JSON and README table equal dashboards/gen_dashboards.py's output
  queries     print every panel query (one per line, '#' comment lines naming the panel) and
              every recording rule name, for scripts/prometheus-live.sh; --skip-bpf leaves out the
              BPF dashboard (tag "bpf") and the BPF recording rules
  selftest    feed broken copies of the dashboards, rules, runbook and rule tests to the checks:
              each breakage must be reported
exit: 0 clean, 1 findings (printed), 2 usage, 77 skipped (a tool is missing)
"""

import argparse
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

DASHBOARD_FILES = ["grafana/coiommu-overview.json", "grafana/coiommu-kernel.json"]
RULES_FILE = os.path.join("dashboards", "prometheus", "rules.yml")
RULES_TEST_FILE = os.path.join("dashboards", "prometheus", "rules_test.yml")
RUNBOOK_FILE = os.path.join("dashboards", "RUNBOOK.md")
# Every alert's runbook_url: dashboards/RUNBOOK.md where the package installs dashboards/
# (engine/daemon/main.cc, dashboards_dir()), anchored at the alert's own section.
RUNBOOK_URL = "file:///usr/share/coiommu/dashboards/RUNBOOK.md#"
RATE_FUNCS = {"rate", "irate", "increase"}
COUNTER_SUFFIXES = ("_total", "_bucket", "_count", "_sum")
KEYWORDS = {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan",
            # aggregation operators ("sum by (le) (...)": not always followed by '(')
            "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk",
            "topk", "quantile"}
LABEL_LIST_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
# Grafana variables and what they become for promtool / a live Prometheus.
SUBSTITUTIONS = [("$__rate_interval", "1m"), ("$__interval", "15s"), ("$__range", "1h"),
                 ("${datasource}", "prometheus"), ("$instance", ".+"), ("$job", ".+"), ("$vm", ".+")]
ENDED = ("vm", "!=", "(ended)")
VM_MATCHER = ("vm", "=~", "$vm")


# --------------------------------------------------------------------------------------------
# A small PromQL tokenizer: enough to find selectors, their matchers, the enclosing function of
# each selector, and range durations.

TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<range>\[[^\]]*\])
  | (?P<num>0x[0-9a-fA-F]+|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<op>=~|!~|!=|==|>=|<=|[-+*/%^<>=(){},])
""", re.VERBOSE)


def tokenize(expr):
    pos, out = 0, []
    while pos < len(expr):
        m = TOKEN.match(expr, pos)
        if not m:
            raise ValueError(f"cannot tokenize at {expr[pos:pos + 20]!r}")
        pos = m.end()
        if m.lastgroup != "ws":
            out.append((m.lastgroup, m.group()))
    return out


class Selector:
    def __init__(self, name, matchers, enclosing, range_):
        self.name = name            # metric name
        self.matchers = matchers    # [(label, op, value)]
        self.enclosing = enclosing  # the innermost function around it, or None
        self.range = range_         # "[...]" right after it, or None


def selectors(expr):
    """The metric selectors of an expression, with their matchers and enclosing function."""
    toks = tokenize(expr)
    stack = []  # one entry per open '(': the function name before it, or None
    found = []
    i = 0
    while i < len(toks):
        kind, text = toks[i]
        nxt = toks[i + 1] if i + 1 < len(toks) else (None, None)
        if kind == "op" and text == "(":
            prev = toks[i - 1] if i > 0 else (None, None)
            stack.append(prev[1] if prev[0] == "ident" else None)
        elif kind == "op" and text == ")":
            if stack:
                stack.pop()
        elif kind == "ident" and text in LABEL_LIST_KEYWORDS:
            if nxt == ("op", "("):  # skip the label list
                depth, i = 0, i + 1
                while i < len(toks):
                    if toks[i] == ("op", "("):
                        depth += 1
                    elif toks[i] == ("op", ")"):
                        depth -= 1
                        if depth == 0:
                            break
                    i += 1
        elif kind == "ident" and text.lower() not in KEYWORDS and nxt != ("op", "("):
            matchers, j = [], i + 1
            if j < len(toks) and toks[j] == ("op", "{"):
                j += 1
                while j < len(toks) and toks[j] != ("op", "}"):
                    if toks[j][0] == "ident" and j + 2 < len(toks):
                        value = toks[j + 2][1]
                        matchers.append((toks[j][1], toks[j + 1][1], json.loads(value) if value[0] == '"' else value))
                        j += 3
                    else:
                        j += 1
                j += 1
            range_ = toks[j][1] if j < len(toks) and toks[j][0] == "range" else None
            found.append(Selector(text, matchers, stack[-1] if stack else None, range_))
            i = j - 1
        i += 1
    return found


def function_ranges(expr):
    """(function, range) for every rate-like call: the range written right after its selector."""
    return [(s.enclosing, s.range) for s in selectors(expr) if s.enclosing in RATE_FUNCS]


def substitute(expr):
    for var, value in SUBSTITUTIONS:
        expr = expr.replace(var, value)
    return expr


# --------------------------------------------------------------------------------------------
# Known metrics: exporter/METRICS.md's first column (histograms expand to their series).

def known_metrics(root):
    names = {"up"}
    with open(os.path.join(root, "exporter", "METRICS.md"), encoding="utf-8") as f:
        for line in f:
            m = re.match(r"^\| `([a-z_][a-z0-9_]*)` \| ([a-z]+)", line)
            if not m:
                continue
            name, kind = m.groups()
            names.add(name)
            if kind == "histogram":
                names.update({name + "_bucket", name + "_sum", name + "_count"})
    return names


def per_vm_metrics(root):
    """The families METRICS.md lists with the `vm` label, histograms expanded to their series."""
    names = set()
    with open(os.path.join(root, "exporter", "METRICS.md"), encoding="utf-8") as f:
        for line in f:
            m = re.match(r"^\| `([a-z_][a-z0-9_]*)` \| ([a-z]+)[^|]*\| ([^|]*)\|", line)
            if m and "`vm`" in m.group(3):
                name, kind = m.group(1), m.group(2)
                names.add(name)
                if kind == "histogram":
                    names.update({name + "_bucket", name + "_sum", name + "_count"})
    return names


def rule_exprs(path):
    """(name, expr) of every rule in a rules file (the small YAML subset rules.yml uses)."""
    rules, name = [], None
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        m = re.match(r"^\s*- (record|alert): (\S+)", line)
        if m:
            name = m.group(2)
        m = re.match(r"^(\s*)expr: (.*)$", line)
        if m:
            indent, value = len(m.group(1)), m.group(2).strip()
            if value in ("|", ">"):
                body = []
                i += 1
                while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
                    body.append(lines[i].strip())
                    i += 1
                rules.append((name, " ".join(b for b in body if b)))
                continue
            rules.append((name, value))
        i += 1
    return rules


def recorded_names(path):
    with open(path, encoding="utf-8") as f:
        return re.findall(r"^\s*- record: (\S+)", f.read(), re.M)


# --------------------------------------------------------------------------------------------
# Structural checks.

def panels_of(d):
    return d.get("panels", [])


def check_dashboard(d, path, known, problems, per_vm=frozenset()):
    def bad(msg):
        problems.append(f"{path}: {msg}")

    for key in ("uid", "title", "schemaVersion", "panels", "templating"):
        if key not in d:
            bad(f"missing top-level '{key}'")
    if d.get("schemaVersion") != 36:
        bad(f"schemaVersion {d.get('schemaVersion')} (want 36)")

    # Variables.
    variables = {v.get("name"): v for v in d.get("templating", {}).get("list", [])}
    ds = variables.get("datasource")
    if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        bad("needs a 'datasource' variable of type datasource with query 'prometheus'")
    for name in ("job", "instance", "vm"):
        v = variables.get(name)
        if not v:
            bad(f"needs a '{name}' variable")
            continue
        for key, want in (("type", "query"), ("multi", True), ("includeAll", True), ("allValue", ".+"),
                          ("label", name)):
            if v.get(key) != want:
                bad(f"variable {name}: {key} is {v.get(key)!r}, want {want!r}")
        if v.get("datasource", {}).get("uid") != "${datasource}":
            bad(f"variable {name}: datasource must be ${{datasource}}")
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        m = re.match(r"^label_values\(([a-z_:][a-z0-9_:]*)", q or "")
        if not m:
            bad(f"variable {name}: query {q!r} is not label_values(metric...)")
        elif m.group(1) not in known:
            bad(f"variable {name}: metric {m.group(1)} is not in exporter/METRICS.md")

    # Panels.
    ids = set()
    rects = []
    for p in panels_of(d):
        pid, title = p.get("id"), p.get("title", "")
        where = f"panel {pid} {title!r}"
        if pid in ids:
            bad(f"{where}: duplicate panel id")
        ids.add(pid)
        g = p.get("gridPos", {})
        x, y, w, h = g.get("x"), g.get("y"), g.get("w"), g.get("h")
        if None in (x, y, w, h) or x < 0 or y < 0 or w < 1 or h < 1 or x + w > 24:
            bad(f"{where}: gridPos {g} is not inside the 24-column grid")
        else:
            for (ox, oy, ow, oh, other) in rects:
                if x < ox + ow and ox < x + w and y < oy + oh and oy < y + h:
                    bad(f"{where}: overlaps {other}")
            rects.append((x, y, w, h, where))
        if p.get("type") == "row":
            continue
        if not title.strip():
            bad(f"{where}: no title")
        if not p.get("description", "").strip():
            bad(f"{where}: no description")
        if not p.get("fieldConfig", {}).get("defaults", {}).get("unit"):
            bad(f"{where}: no unit (fieldConfig.defaults.unit)")
        if p.get("datasource") != {"type": "prometheus", "uid": "${datasource}"}:
            bad(f"{where}: datasource must be {{type prometheus, uid ${{datasource}}}}")
        targets = p.get("targets", [])
        if not targets:
            bad(f"{where}: no targets")
        refids = set()
        for t in targets:
            check_target(t, p, f"{where} target {t.get('refId')}", known, bad, per_vm)
            if t.get("refId") in refids:
                bad(f"{where}: duplicate refId {t.get('refId')}")
            refids.add(t.get("refId"))


def check_target(t, panel, where, known, bad, per_vm=frozenset()):
    expr = t.get("expr", "")
    if not expr:
        bad(f"{where}: no expr")
        return
    if not t.get("refId"):
        bad(f"{where}: no refId")
    if "datasource" in t and t["datasource"] != {"type": "prometheus", "uid": "${datasource}"}:
        bad(f"{where}: target datasource must be ${{datasource}}")
    try:
        sels = selectors(expr)
    except ValueError as e:
        bad(f"{where}: {e}")
        return
    if not sels:
        bad(f"{where}: no metric selector in {expr!r}")
    for s in sels:
        ms = {(label, op, value) for label, op, value in s.matchers}
        for label in ("job", "instance"):
            if (label, "=~", f"${label}") not in ms:
                bad(f"{where}: {s.name} lacks {label}=~\"${label}\"")
        if s.name not in known:
            bad(f"{where}: metric {s.name} is not in exporter/METRICS.md")
        if s.name in per_vm and VM_MATCHER not in ms:
            bad(f"{where}: {s.name} (per VM) lacks vm=~\"$vm\"")
        if s.name in per_vm and s.enclosing in RATE_FUNCS and ENDED not in ms:
            bad(f"{where}: {s.enclosing}({s.name}) lacks vm!=\"(ended)\"")
        if s.name.endswith(COUNTER_SUFFIXES) and s.enclosing not in RATE_FUNCS:
            bad(f"{where}: counter {s.name} outside rate/irate/increase (in {s.enclosing or 'nothing'})")
        if s.enclosing in RATE_FUNCS and s.range != "[$__rate_interval]":
            bad(f"{where}: {s.enclosing}({s.name}{s.range}) must use [$__rate_interval]")
    if panel.get("type") == "heatmap":
        if t.get("format") != "heatmap" or t.get("legendFormat") != "{{le}}":
            bad(f"{where}: heatmap targets need format 'heatmap' and legendFormat '{{{{le}}}}'")
        if not re.match(r"^sum by \(le\) \(increase\([a-z0-9_]+_bucket\{", expr):
            bad(f"{where}: heatmap query must be sum by (le) (increase(x_bucket{{...}}[...]))")
        if panel.get("options", {}).get("calculate") is not False:
            bad(f"{where}: heatmap must not calculate buckets client-side (options.calculate false)")


def check_rules_metrics(root, known, problems, per_vm=frozenset()):
    path = os.path.join(root, "dashboards", "prometheus", "rules.yml")
    recorded = set(recorded_names(path))
    for name, expr in rule_exprs(path):
        for s in selectors(expr):
            if s.name not in known and s.name not in recorded:
                problems.append(f"rules.yml {name}: metric {s.name} is not in exporter/METRICS.md")
            if s.name in per_vm and s.enclosing in RATE_FUNCS and ENDED not in set(s.matchers):
                problems.append(f"rules.yml {name}: {s.enclosing}({s.name}) lacks vm!=\"(ended)\"")


def alert_annotations(text):
    """{alert name: {annotation: value}} of a rules file (the small YAML subset rules.yml uses)."""
    alerts, name, in_annotations, indent = {}, None, False, 0
    for line in text.split("\n"):
        m = re.match(r"^\s*- (record|alert): (\S+)", line)
        if m:
            name = m.group(2) if m.group(1) == "alert" else None
            if name:
                alerts[name] = {}
            in_annotations = False
            continue
        if name is None:
            continue
        m = re.match(r"^(\s*)annotations:\s*$", line)
        if m:
            in_annotations, indent = True, len(m.group(1))
            continue
        if in_annotations:
            m = re.match(r"^(\s*)([A-Za-z_][A-Za-z0-9_]*): (.*)$", line)
            if m and len(m.group(1)) > indent:
                alerts[name][m.group(2)] = m.group(3).strip()
            elif line.strip():
                in_annotations = False
    return alerts


def markdown_anchors(text):
    """The GitHub-style anchors of a Markdown file's headings (outside code blocks)."""
    anchors, in_code = set(), False
    for line in text.split("\n"):
        if line.startswith("```"):
            in_code = not in_code
            continue
        m = re.match(r"^#{1,6} (.+?)\s*$", line)
        if m and not in_code:
            anchors.add(re.sub(r"[^\w\- ]", "", m.group(1).lower()).replace(" ", "-"))
    return anchors


def runbook_problems(rules_text, runbook_text, tests_text):
    """Every alert: runbook_url = RUNBOOK_URL + its lower-case name, a RUNBOOK.md section with that
    anchor, and a firing and a quiet case in rules_test.yml; every alert section has its alert."""
    problems = []
    alerts = alert_annotations(rules_text)
    anchors = markdown_anchors(runbook_text)
    for name, annotations in alerts.items():
        want = RUNBOOK_URL + name.lower()
        url = annotations.get("runbook_url")
        if not url:
            problems.append(f"rules.yml {name}: no runbook_url annotation (want {want})")
        elif url != want:
            problems.append(f"rules.yml {name}: runbook_url {url!r}, want {want!r}")
        if name.lower() not in anchors:
            problems.append(f"RUNBOOK.md: no section '## {name}' (anchor #{name.lower()}) for alert {name}")
        cases = re.findall(r"alertname: " + re.escape(name) + r"[ \t]*\n\s*exp_alerts:(.*)", tests_text)
        if not any(c.strip() == "[]" for c in cases):
            problems.append(f"rules_test.yml: no quiet case (exp_alerts: []) for alert {name}")
        if not any(c.strip() != "[]" for c in cases):
            problems.append(f"rules_test.yml: no firing case for alert {name}")
    for section in re.findall(r"^## (Coiommu[A-Za-z0-9]+)\s*$", runbook_text, re.M):
        if section not in alerts:
            problems.append(f"RUNBOOK.md: section {section} has no alert in rules.yml")
    return problems


def read_text(root, rel):
    with open(os.path.join(root, rel), encoding="utf-8") as f:
        return f.read()


def load_dashboards(root):
    out = {}
    for rel in DASHBOARD_FILES:
        with open(os.path.join(root, "dashboards", rel), encoding="utf-8") as f:
            out[rel] = json.load(f)
    return out


def structure_problems(root, dashboards):
    known = known_metrics(root)
    per_vm = per_vm_metrics(root)
    problems = []
    uids = {}
    for rel, d in dashboards.items():
        if d.get("uid") in uids:
            problems.append(f"{rel}: uid {d.get('uid')} also used by {uids[d.get('uid')]}")
        uids[d.get("uid")] = rel
        check_dashboard(d, rel, known, problems, per_vm)
    check_rules_metrics(root, known, problems, per_vm)
    problems.extend(runbook_problems(read_text(root, RULES_FILE), read_text(root, RUNBOOK_FILE),
                                     read_text(root, RULES_TEST_FILE)))
    return problems


def cmd_structure(root):
    dashboards = load_dashboards(root)
    problems = structure_problems(root, dashboards)
    for p in problems:
        print("FAIL", p)
    n = sum(len([p for p in panels_of(d) if p.get("type") != "row"]) for d in dashboards.values())
    print(f"{len(dashboards)} dashboards, {n} panels: {len(problems)} problem(s)")
    return 1 if problems else 0


# --------------------------------------------------------------------------------------------
# promtool.

def panel_queries(dashboards):
    """[(dashboard uid, panel id, refId, title, expr)] of every panel target."""
    out = []
    for d in dashboards.values():
        for p in panels_of(d):
            for t in p.get("targets", []):
                out.append((d["uid"], p["id"], t.get("refId", "?"), p.get("title", ""), t.get("expr", "")))
    return out


def run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    return r.returncode, (r.stdout + r.stderr).strip()


def cmd_promql(root, promtool):
    if not shutil.which(promtool):
        print(f"SKIP: {promtool} not found (apt install prometheus)")
        return 77
    failed = 0
    queries = panel_queries(load_dashboards(root))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "panels.rules.yml")
        with open(path, "w", encoding="utf-8") as f:
            f.write("groups:\n  - name: dashboard_panels\n    rules:\n")
            for uid, pid, ref, _title, expr in queries:
                record = f"dashcheck:{uid.replace('-', '_')}:panel{pid}_{ref}"
                f.write(f"      - record: {record}\n        expr: {json.dumps(substitute(expr))}\n")
        rc, out = run([promtool, "check", "rules", path])
        print(f"promtool check rules (panel queries as recording rules): rc {rc}")
        if rc != 0:
            print(out)
            failed += 1
    prom = os.path.join(root, "dashboards", "prometheus")
    for cmd in ([promtool, "check", "rules", os.path.join(prom, "rules.yml")],
                [promtool, "test", "rules", os.path.join(prom, "rules_test.yml")],
                [promtool, "check", "config", os.path.join(prom, "scrape.yml")]):
        rc, out = run(cmd)
        print(f"{' '.join(cmd[1:3])} {os.path.relpath(cmd[3], root)}: rc {rc}")
        if rc != 0:
            print(out)
            failed += 1
    print(f"{len(queries)} panel queries checked: {'FAIL' if failed else 'ok'}")
    return 1 if failed else 0


def cmd_generated(root):
    rc, out = run([sys.executable, os.path.join(root, "dashboards", "gen_dashboards.py"), "--check"])
    if out:
        print(out)
    print("generated files are up to date" if rc == 0 else "FAIL: generated files are stale")
    return 0 if rc == 0 else 1


def cmd_queries(root, skip_bpf):
    dashboards = load_dashboards(root)
    if skip_bpf:
        dashboards = {k: v for k, v in dashboards.items() if "bpf" not in v.get("tags", [])}
    for uid, pid, ref, title, expr in panel_queries(dashboards):
        print(f"# {uid} panel {pid} {ref}: {title}")
        print(" ".join(expr.split()))
    print("# recording rules (dashboards/prometheus/rules.yml)")
    for name in recorded_names(os.path.join(root, "dashboards", "prometheus", "rules.yml")):
        if not (skip_bpf and "_bpf_" in name):
            print(name)
    return 0


# --------------------------------------------------------------------------------------------
# Self-test: every check must catch its breakage.

def cmd_selftest(root):
    base = load_dashboards(root)
    if structure_problems(root, base):
        print("FAIL: the committed dashboards are not clean; run 'structure' first")
        return 1
    ov = "grafana/coiommu-overview.json"

    def first_panel(ds, kind="timeseries"):
        return next(p for p in ds[ov]["panels"] if p["type"] == kind)

    def set_expr(ds, expr, kind="timeseries"):
        first_panel(ds, kind)["targets"][0]["expr"] = expr

    breakages = {
        "duplicate uid": lambda ds: ds["grafana/coiommu-kernel.json"].__setitem__("uid", ds[ov]["uid"]),
        "duplicate panel id": lambda ds: ds[ov]["panels"][2].__setitem__("id", ds[ov]["panels"][1]["id"]),
        "grid beyond 24 columns": lambda ds: first_panel(ds)["gridPos"].__setitem__("x", 20),
        "overlapping panels": lambda ds: ds[ov]["panels"][2].__setitem__("gridPos", dict(ds[ov]["panels"][1]["gridPos"])),
        "no unit": lambda ds: first_panel(ds)["fieldConfig"]["defaults"].pop("unit"),
        "no description": lambda ds: first_panel(ds).__setitem__("description", ""),
        "fixed datasource": lambda ds: first_panel(ds).__setitem__("datasource", {"type": "prometheus", "uid": "abc"}),
        "no instance variable": lambda ds: ds[ov]["templating"]["list"].pop(2),
        "variable without allValue": lambda ds: ds[ov]["templating"]["list"][1].__setitem__("allValue", None),
        "missing job matcher": lambda ds: set_expr(ds, 'sum(rate(coiommu_pin_requests_total{instance=~"$instance",vm=~"$vm",vm!="(ended)"}[$__rate_interval]))'),
        "no vm variable": lambda ds: ds[ov]["templating"]["list"].pop(),
        "missing vm matcher": lambda ds: set_expr(ds, 'sum(rate(coiommu_pin_requests_total{job=~"$job",instance=~"$instance",vm!="(ended)"}[$__rate_interval]))'),
        "ended VMs inside a rate": lambda ds: set_expr(ds, 'sum(rate(coiommu_pin_requests_total{job=~"$job",instance=~"$instance",vm=~"$vm"}[$__rate_interval]))'),
        "counter without rate": lambda ds: set_expr(ds, 'sum(coiommu_pin_requests_total{job=~"$job",instance=~"$instance",vm=~"$vm"})'),
        "bucket without rate": lambda ds: set_expr(ds, 'histogram_quantile(0.9, sum by (le) (coiommu_dma_call_duration_seconds_bucket{job=~"$job",instance=~"$instance",vm=~"$vm"}))'),
        "fixed rate interval": lambda ds: set_expr(ds, 'sum(rate(coiommu_pin_requests_total{job=~"$job",instance=~"$instance",vm=~"$vm",vm!="(ended)"}[5m]))'),
        "unknown metric": lambda ds: set_expr(ds, 'sum(rate(coiommu_no_such_metric_total{job=~"$job",instance=~"$instance"}[$__rate_interval]))'),
        "heatmap without format": lambda ds: first_panel(ds, "heatmap")["targets"][0].pop("format"),
    }
    missed = 0
    for name, breakage in breakages.items():
        ds = copy.deepcopy(base)
        breakage(ds)
        found = structure_problems(root, ds)
        print(f"{'ok  ' if found else 'MISS'} {name}: {found[0] if found else 'not reported'}")
        missed += 0 if found else 1

    # Rules, runbook and rule tests: (rules.yml, RUNBOOK.md, rules_test.yml) -> broken copies.
    texts = (read_text(root, RULES_FILE), read_text(root, RUNBOOK_FILE), read_text(root, RULES_TEST_FILE))
    if runbook_problems(*texts):
        print("FAIL: the committed rules/runbook/tests are not clean; run 'structure' first")
        return 1
    anchor = "#coiommuunpinstalled"
    text_breakages = {
        "alert without runbook_url": lambda r, b, t: (re.sub(r"\n *runbook_url: [^\n]*", "", r, count=1), b, t),
        "runbook_url outside the runbook": lambda r, b, t: (r.replace(RUNBOOK_URL[:-1] + anchor, "https://wiki.example/coiommu" + anchor), b, t),
        "runbook section missing": lambda r, b, t: (r, b.replace("## CoiommuUnpinStalled\n", "## Unpinning\n"), t),
        "runbook section without alert": lambda r, b, t: (r, b + "\n## CoiommuNoSuchAlert\n\nGone.\n", t),
        "alert without quiet case": lambda r, b, t: (r, b, re.sub(r"(alertname: CoiommuTracerDown\n\s*exp_alerts:) \[\]", r"\1\n          - exp_labels: {}", t)),
    }
    for name, breakage in text_breakages.items():
        found = runbook_problems(*breakage(*texts))
        print(f"{'ok  ' if found else 'MISS'} {name}: {found[0] if found else 'not reported'}")
        missed += 0 if found else 1
    total = len(breakages) + len(text_breakages)
    print(f"{total - missed}/{total} breakages reported")
    return 1 if missed else 0


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], usage=__doc__.split("\n\n")[1])
    ap.add_argument("--root", default=os.path.normpath(os.path.join(here, "..", "..", "..")),
                    help="source tree (default: this script's)")
    ap.add_argument("--promtool", default=os.environ.get("PROMTOOL", "promtool"))
    ap.add_argument("--skip-bpf", action="store_true", help="queries: leave out the BPF dashboard and rules")
    ap.add_argument("command", choices=["structure", "promql", "generated", "queries", "selftest"])
    args = ap.parse_args()
    if args.command == "structure":
        return cmd_structure(args.root)
    if args.command == "promql":
        return cmd_promql(args.root, args.promtool)
    if args.command == "generated":
        return cmd_generated(args.root)
    if args.command == "queries":
        return cmd_queries(args.root, args.skip_bpf)
    return cmd_selftest(args.root)


if __name__ == "__main__":
    sys.exit(main())
