/**
 * The layers of lib/ (docs/architecture.md), checked: every relative import in every .ts file
 * under lib/ must run down a layer or stay inside its own folder, the applications must reach the
 * library only through its entries, and no files may import each other in a cycle.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, posix, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

import ts from 'typescript';
import { describe, expect, it } from 'vitest';

const LIB = fileURLToPath(new URL('../../lib/', import.meta.url));

/**
 * Each top-level folder of lib/ and its rank; a file may import only from its own folder or from
 * a lower rank. Folders of equal rank are siblings and may not import each other: keys, layout
 * and policy each stand on core alone; peer, engine-channel and llama each build on the
 * Warehouse, and cluster sits above peer because it fetches blocks from peers (PeerPool).
 * `entry` is the files at the root of lib/ (index.ts, internal.ts), which gather the layers
 * below; the applications come last and import nothing but the entries (see ENTRIES).
 */
const RANKS: Readonly<Record<string, number>> = {
  core: 0,
  keys: 1,
  layout: 1,
  policy: 1,
  warehouse: 2,
  peer: 3,
  'engine-channel': 3,
  llama: 3,
  cluster: 4,
  entry: 5,
  apps: 6,
};

/** The only library files an application may import: the two public entries and internal.ts. */
const ENTRIES: ReadonlySet<string> = new Set(['index.ts', 'internal.ts', 'llama/index.ts']);

/**
 * Allowances for imports that break the rules, each with its reason. None is needed today; the
 * test fails when one is no longer needed, so none outlives its reason.
 */
const ALLOWED_EDGES: ReadonlySet<string> = new Set<string>([]);
const ALLOWED_CYCLES: ReadonlySet<string> = new Set<string>([]);

type Sources = ReadonlyMap<string, string>;

/** Every .ts file under lib/, by its path relative to lib/ with forward slashes. */
function readLib(): Map<string, string> {
  const out = new Map<string, string>();
  for (const entry of readdirSync(LIB, { recursive: true, withFileTypes: true })) {
    if (!entry.isFile() || !entry.name.endsWith('.ts')) continue;
    const path = join(entry.parentPath, entry.name);
    out.set(relative(LIB, path).split('\\').join('/'), readFileSync(path, 'utf8'));
  }
  return out;
}

/**
 * Every module specifier a file names: import and export declarations (type-only, namespace
 * re-exports `export * as ns from` included), `import('...')` types, and literal dynamic
 * `import()` and `require()` calls, from TypeScript's own parse (comments and strings are not
 * imports).
 */
function specifiers(file: string, text: string): string[] {
  const out: string[] = [];
  const visit = (node: ts.Node): void => {
    if (
      (ts.isImportDeclaration(node) || ts.isExportDeclaration(node)) &&
      node.moduleSpecifier !== undefined &&
      ts.isStringLiteral(node.moduleSpecifier)
    ) {
      out.push(node.moduleSpecifier.text);
    } else if (
      ts.isImportTypeNode(node) &&
      ts.isLiteralTypeNode(node.argument) &&
      ts.isStringLiteral(node.argument.literal)
    ) {
      out.push(node.argument.literal.text);
    } else if (
      ts.isCallExpression(node) &&
      (node.expression.kind === ts.SyntaxKind.ImportKeyword ||
        (ts.isIdentifier(node.expression) && node.expression.text === 'require')) &&
      node.arguments[0] !== undefined &&
      ts.isStringLiteralLike(node.arguments[0])
    ) {
      out.push(node.arguments[0].text);
    }
    ts.forEachChild(node, visit);
  };
  visit(ts.createSourceFile(file, text, ts.ScriptTarget.Latest, true, ts.ScriptKind.TS));
  return out;
}

/** The package's own entries, were a library file to import itself by name. */
const SELF: Readonly<Record<string, string>> = {
  kvtier: 'index.ts',
  'kvtier/llama': 'llama/index.ts',
};

/** The lib-relative files each file imports (packages and node: built-ins are not followed). */
function importGraph(sources: Sources): Map<string, Set<string>> {
  const graph = new Map<string, Set<string>>();
  for (const [file, text] of sources) {
    const targets = new Set<string>();
    for (const name of specifiers(file, text)) {
      const self = SELF[name];
      if (self !== undefined) targets.add(self);
      if (!name.startsWith('.')) continue;
      targets.add(posix.normalize(posix.join(dirname(file), name)).replace(/\.js$/, '.ts'));
    }
    graph.set(file, targets);
  }
  return graph;
}

/** A public or internal entry (llama/index.ts included: it is the `kvtier/llama` entry). */
function layerOf(file: string): string {
  if (ENTRIES.has(file) || !file.includes('/')) return 'entry';
  return file.split('/')[0] as string;
}

/** Imports that break the layering, as `from -> to: why`, and the allowances that were used. */
function layerViolations(graph: Map<string, Set<string>>): { bad: string[]; used: Set<string> } {
  const bad: string[] = [];
  const used = new Set<string>();
  for (const [from, targets] of graph) {
    const a = layerOf(from);
    for (const to of targets) {
      const edge = `${from} -> ${to}`;
      const b = layerOf(to);
      const [ra, rb] = [RANKS[a], RANKS[b]];
      let why: string | undefined;
      if (to.startsWith('../')) why = 'leaves lib/';
      else if (ra === undefined) why = `${a}/ has no layer in RANKS`;
      else if (rb === undefined) why = `${b}/ has no layer in RANKS`;
      else if (a === 'apps' && b !== 'apps' && !ENTRIES.has(to)) {
        why = 'an application reaches past index.ts / internal.ts into the library';
      } else if (a !== b && rb > ra) why = `runs up from ${a} to ${b}`;
      else if (a !== b && rb === ra) why = `sibling layers ${a} and ${b}`;
      if (why === undefined) continue;
      if (ALLOWED_EDGES.has(edge)) used.add(edge);
      else bad.push(`${edge}: ${why}`);
    }
  }
  return { bad: bad.sort(), used };
}

/** Each import cycle once, as `a -> b -> ... -> a` starting from its smallest file. */
function cycles(graph: Map<string, Set<string>>): string[] {
  // Tarjan's strongly connected components: every component of more than one file (or a file
  // importing itself) holds a cycle; one cycle through it is reported, found by a walk inside it.
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const components: string[][] = [];
  let next = 0;
  const visit = (v: string): void => {
    index.set(v, next);
    low.set(v, next++);
    stack.push(v);
    onStack.add(v);
    for (const w of graph.get(v) ?? []) {
      if (!graph.has(w)) continue;
      if (!index.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v) as number, low.get(w) as number));
      } else if (onStack.has(w)) low.set(v, Math.min(low.get(v) as number, index.get(w) as number));
    }
    if (low.get(v) !== index.get(v)) return;
    const component: string[] = [];
    let w: string;
    do {
      w = stack.pop() as string;
      onStack.delete(w);
      component.push(w);
    } while (w !== v);
    if (component.length > 1 || graph.get(v)?.has(v)) components.push(component);
  };
  for (const v of [...graph.keys()].sort()) if (!index.has(v)) visit(v);

  return components.map((component) => {
    const inside = new Set(component);
    const start = [...component].sort()[0] as string;
    const path = [start];
    const seen = new Set([start]);
    // Walk inside the component until it returns to the start (it always can: it is strongly
    // connected), preferring the start, then unvisited files, in sorted order.
    for (let at = start; ;) {
      const targets = [...(graph.get(at) ?? [])].filter((t) => inside.has(t)).sort();
      const step = targets.includes(start) ? start : targets.find((t) => !seen.has(t));
      if (step === undefined || step === start) break;
      path.push(step);
      seen.add(step);
      at = step;
    }
    return [...path, start].join(' -> ');
  });
}

function check(sources: Sources): { bad: string[]; stale: string[] } {
  const graph = importGraph(sources);
  const { bad, used } = layerViolations(graph);
  for (const cycle of cycles(graph)) {
    if (ALLOWED_CYCLES.has(cycle)) used.add(cycle);
    else bad.push(`import cycle: ${cycle}`);
  }
  const stale = [...ALLOWED_EDGES, ...ALLOWED_CYCLES].filter((a) => !used.has(a));
  return { bad, stale };
}

describe('layers of lib/', () => {
  it('every import runs down a layer, applications use the entries, and there are no cycles', () => {
    const sources = readLib();
    expect(sources.size).toBeGreaterThan(100);
    const { bad } = check(sources);
    expect(bad, `imports that break the layers (docs/architecture.md):\n${bad.join('\n')}`).toEqual(
      [],
    );
  });

  it('holds no temporary allowance that the code no longer needs', () => {
    const { stale } = check(readLib());
    expect(stale, 'delete these allowances from test/unit/layers.test.ts').toEqual([]);
  });

  it('keeps internal.ts out of the package: only index.ts and llama/index.ts are published entries', () => {
    const pkg = JSON.parse(readFileSync(join(LIB, '..', 'package.json'), 'utf8')) as {
      exports: Record<string, { import: string }>;
    };
    const published = Object.values(pkg.exports)
      .map((e) => (typeof e === 'string' ? e : e.import))
      .filter((path) => path.endsWith('.js'));
    expect(published.sort()).toEqual(['./dist/index.js', './dist/llama/index.js']);
  });

  it('reports an import up a layer, past the entries, between siblings, or in a cycle', () => {
    const bad = check(
      new Map([
        ['core/a.ts', "import { b } from '../keys/b.js';"],
        ['keys/b.ts', "export type { X } from '../core/a.js';"],
        ['policy/p.ts', "import type { K } from '../layout/k.js';"],
        ['layout/k.ts', "const m = await import('./k.js');"],
        ['peer/x.ts', "import '../cluster/c.js';"],
        ['cluster/c.ts', "import { W } from '../warehouse/w.js';"],
        [
          'warehouse/w.ts',
          '// import { x } from "../peer/x.js";\nexport const s = "../peer/x.js";',
        ],
        ['apps/cli/m.ts', "import { W } from '../../warehouse/w.js';\nimport '../../index.js';"],
        ['index.ts', "export { W } from './warehouse/w.js';"],
        ['lost/f.ts', "import { a } from '../core/a.js';"],
        ['warehouse/up.ts', "import { t } from '../../test/helpers.js';"],
        ['keys/ns.ts', "export * as peer from '../peer/x.js';"],
        ['layout/self.ts', "import { Warehouse } from 'kvtier';"],
        ['policy/req.ts', "const x = require('../warehouse/w.js');"],
      ]),
    ).bad;
    expect(bad).toEqual([
      'apps/cli/m.ts -> warehouse/w.ts: an application reaches past index.ts / internal.ts into the library',
      'core/a.ts -> keys/b.ts: runs up from core to keys',
      'keys/ns.ts -> peer/x.ts: runs up from keys to peer',
      'layout/self.ts -> index.ts: runs up from layout to entry',
      'lost/f.ts -> core/a.ts: lost/ has no layer in RANKS',
      'peer/x.ts -> cluster/c.ts: runs up from peer to cluster',
      'policy/p.ts -> layout/k.ts: sibling layers policy and layout',
      'policy/req.ts -> warehouse/w.ts: runs up from policy to warehouse',
      'warehouse/up.ts -> ../test/helpers.ts: leaves lib/',
      'import cycle: core/a.ts -> keys/b.ts -> core/a.ts',
      'import cycle: layout/k.ts -> layout/k.ts',
    ]);
  });
});
