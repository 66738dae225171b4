// The negative half of the check: deliberately broken copies of a committed dashboard, each of
// which must fail the type check with the expected error. Without it the check could pass
// vacuously (a typing that accepts anything, a tsconfig that includes no files, JSON widened to
// string, ...). Each case changes one thing in a copy of dashboards/grafana/coiommu-kernel.json,
// which itself passes (the positive half runs first), so the case's change is the only error.
//
// usage: node broken.mjs gen            write gen-broken/<case>.ts
//        node broken.mjs verify FILE    FILE holds `tsc -p tsconfig.broken.json` output: exit 0 iff
//                                       every case has an error matching its pattern
import { readFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { here, root, dashboardsDir, writeDashboardTs, freshDir, tsName } from './gen.mjs';

const base = join(dashboardsDir, 'coiommu-kernel.json');
const firstPanel = (d, type) => d.panels.find((p) => p.type === type);

// name: [what it breaks, mutation, pattern the tsc error for that file must match]
const CASES = {
  'gridpos-h-string': ['a number field holding a string (gridPos.h "8")',
    (d) => { firstPanel(d, 'timeseries').gridPos.h = '8'; },
    /TS2322: Type 'string' is not assignable to type 'number'/],
  'unknown-top-level-key': ['a misspelled top-level key (titel)',
    (d) => { d.titel = d.title; delete d.title; },
    /TS2353: .*'"titel"' does not exist/],
  'missing-schema-version': ['a required key missing (schemaVersion)',
    (d) => { delete d.schemaVersion; },
    /TS2741: Property 'schemaVersion' is missing/],
  'graph-tooltip-out-of-range': ['a numeric enum out of range (graphTooltip 3)',
    (d) => { d.graphTooltip = 3; },
    /TS2322: Type '3' is not assignable to type 'DashboardCursorSync/],
  'threshold-mode-typo': ['a string enum value misspelled (thresholds mode "absolut")',
    (d) => { firstPanel(d, 'stat').fieldConfig.defaults.thresholds.mode = 'absolut'; },
    /TS(2322|2820): Type '"absolut"' is not assignable to type '"absolute" \| "percentage"'/],
  'variable-type-typo': ['a string union value misspelled (variable type "querry")',
    (d) => { d.templating.list.find((v) => v.name === 'job').type = 'querry'; },
    /TS(2322|2820): Type '"querry"' is not assignable to type 'VariableType'/],
  'datasource-ref-typo': ['a misspelled key in a closed nested object (panel datasource uuid)',
    (d) => { const ds = firstPanel(d, 'timeseries').datasource; ds.uuid = ds.uid; delete ds.uid; },
    /TS2353: .*'"uuid"' does not exist/],
};

const out = join(here, 'gen-broken');
const short = (s) => (s.length > 200 ? s.slice(0, 197) + '...' : s);
const [cmd, arg] = process.argv.slice(2);
if (cmd === 'gen') {
  freshDir(out);
  const json = readFileSync(base, 'utf8');
  for (const [name, [, mutate]] of Object.entries(CASES)) {
    const d = JSON.parse(json);
    mutate(d);
    writeDashboardTs(d, `${relative(root, base)}, broken: ${name}`, out, name);
  }
  console.log(`broken.mjs: ${Object.keys(CASES).length} broken copies of ${relative(root, base)} in ${relative(root, out)}`);
} else if (cmd === 'verify' && arg) {
  const lines = readFileSync(arg, 'utf8').split('\n');
  let failed = 0;
  for (const [name, [what, , want]] of Object.entries(CASES)) {
    const prefix = `gen-broken/${tsName(name)}.ts(`;
    const errs = lines.filter((l) => l.startsWith(prefix));
    const ok = errs.some((l) => want.test(l));
    if (!ok) failed++;
    console.log(`${ok ? 'ok  ' : 'FAIL'} ${name}: ${what}: ` +
      (ok ? short(errs.find((l) => want.test(l)).slice(prefix.length - 1))
          : `no error matching ${want} (${errs.length} other error(s))`));
    if (!ok) errs.forEach((l) => console.log(`       ${short(l)}`));
  }
  const n = Object.keys(CASES).length;
  console.log(`broken.mjs: ${n - failed}/${n} breakages caught by the schema check`);
  process.exit(failed ? 1 : 0);
} else {
  console.error('usage: node broken.mjs gen | verify TSC_OUTPUT');
  process.exit(2);
}
