#!/usr/bin/env bash
# Checks dashboards/grafana/*.json against Grafana's published dashboard schema: the Dashboard
# type of the @grafana/schema npm package, with the TypeScript compiler (pinned in package.json /
# package-lock.json). ctest: dashboards.grafana_schema.
#
#   1. npm ci, unless node_modules already holds exactly what package-lock.json pins (then no
#      network is needed);
#   2. gen.mjs writes gen/<dashboard>.ts (the JSON as a literal typed Wire<Dashboard>), and
#      `tsc -p .` must pass;
#   3. broken.mjs writes deliberately broken copies of a dashboard to gen-broken/, and
#      `tsc -p tsconfig.broken.json` must fail, every copy with its expected error.
#
# Needs node and npm (Node.js >= 14.17 for TypeScript 5). gen/, gen-broken/ and node_modules/
# are not committed (.gitignore).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

die() { echo "grafana_schema: $*" >&2; exit 1; }

for tool in node npm; do
  command -v "$tool" >/dev/null ||
    die "'$tool' not found: this test needs Node.js and npm on PATH (Node.js >= 14.17) to run the TypeScript compiler against @grafana/schema"
done
echo "grafana_schema: node $(node --version), npm $(npm --version)"

# 1. Dependencies. npm's hidden lockfile (node_modules/.package-lock.json) records what is
# installed; when every package in package-lock.json is there with the same version and
# integrity, skip `npm ci` (works offline).
lock_matches() {
  node -e '
    const fs = require("fs");
    const read = (f) => JSON.parse(fs.readFileSync(f, "utf8")).packages || {};
    let want, have;
    try { want = read("package-lock.json"); have = read("node_modules/.package-lock.json"); }
    catch { process.exit(1); }
    for (const [p, w] of Object.entries(want)) {
      if (p === "") continue;
      const h = have[p];
      if (!h || h.version !== w.version || h.integrity !== w.integrity || !fs.existsSync(p)) process.exit(1);
    }
    process.exit(0);
  '
}
if lock_matches; then
  echo "grafana_schema: node_modules matches package-lock.json, skipping npm ci"
else
  echo "grafana_schema: npm ci"
  npm ci --no-audit --no-fund ||
    die "npm ci failed (is the npm registry reachable? the pinned packages are in package-lock.json)"
fi
tsc=(npx --no-install tsc)
echo "grafana_schema: @grafana/schema $(node -p 'require("@grafana/schema/package.json").version'), typescript $("${tsc[@]}" --version)"

# 2. The committed dashboards must conform.
node gen.mjs
echo "grafana_schema: tsc -p . (the committed dashboards)"
if ! "${tsc[@]}" -p . --pretty false; then
  die "FAIL: dashboards/grafana/*.json do not conform to @grafana/schema's Dashboard (errors above; line numbers are in tests/unit/dashboards/schema/gen/*.ts). Fix dashboards/gen_dashboards.py and rerun it."
fi
echo "grafana_schema: ok, the committed dashboards conform"

# 3. The negative cases must not.
node broken.mjs gen
out=$(mktemp)
trap 'rm -f "$out"' EXIT
echo "grafana_schema: tsc -p tsconfig.broken.json (deliberately broken copies, must fail)"
if "${tsc[@]}" -p tsconfig.broken.json --pretty false >"$out" 2>&1; then
  cat "$out"
  die "FAIL: tsc accepted the deliberately broken dashboards: the check is vacuous"
fi
node broken.mjs verify "$out" || die "FAIL: some breakage was not reported as expected (see above)"
echo "grafana_schema: ok"
