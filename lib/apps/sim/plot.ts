/**
 * Hit rate against capacity for several policies, with the infinite-capacity ceiling, drawn with
 * vega-lite (compiled to a vega view rendered headless to SVG); PNG through resvg (a prebuilt
 * binary shipped inside its npm package: no browser, no canvas).
 */
import { writeFile } from 'node:fs/promises';

import { KvtierError } from '../../index.js';

export interface PlotPoint {
  policy: string;
  /** Capacity as a percentage of distinct blocks. */
  capacity: number;
  /** Prefix hit rate, 0..1. */
  hitRate: number;
}

async function load(name: string): Promise<Record<string, unknown>> {
  try {
    return (await import(name)) as Record<string, unknown>;
  } catch (e) {
    throw new KvtierError('KVTIER_NOT_AVAILABLE', `--plot needs the npm package ${name}`, {
      cause: e,
    });
  }
}

export async function renderPlot(
  points: PlotPoint[],
  ceiling: number,
  title: string,
  file: string,
): Promise<void> {
  const png = file.toLowerCase().endsWith('.png');
  if (!png && !file.toLowerCase().endsWith('.svg')) {
    throw new KvtierError(
      'KVTIER_BAD_ARGUMENT',
      `--plot ${file}: the file must end in .svg or .png`,
    );
  }
  const data = [
    ...points.map((p) => ({ ...p, hitRate: p.hitRate * 100 })),
    ...[...new Set(points.map((p) => p.capacity))].map((capacity) => ({
      policy: 'ceiling (∞)',
      capacity,
      hitRate: ceiling * 100,
    })),
  ];
  const spec = {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title,
    width: 560,
    height: 340,
    background: 'white',
    data: { values: data },
    mark: { type: 'line', point: true },
    encoding: {
      x: {
        field: 'capacity',
        type: 'quantitative',
        scale: { type: 'log' },
        title: 'capacity (% of distinct blocks, log scale)',
      },
      y: {
        field: 'hitRate',
        type: 'quantitative',
        scale: { domain: [0, 100] },
        title: 'prefix hit rate (%)',
      },
      color: { field: 'policy', type: 'nominal', title: 'policy' },
      strokeDash: {
        condition: { test: "datum.policy === 'ceiling (∞)'", value: [4, 4] },
        value: [1, 0],
      },
    },
  };
  const vl = (await load('vega-lite')) as {
    compile: (s: unknown) => { spec: unknown };
  };
  const vega = (await load('vega')) as {
    View: new (
      runtime: unknown,
      opts: { renderer: string },
    ) => { toSVG: () => Promise<string>; finalize: () => void };
    parse: (s: unknown) => unknown;
  };
  const view = new vega.View(vega.parse(vl.compile(spec).spec), { renderer: 'none' });
  const svg = await view.toSVG();
  view.finalize();
  if (!png) {
    await writeFile(file, svg);
    return;
  }
  const resvg = (await load('@resvg/resvg-js')) as {
    Resvg: new (svg: string, opts: unknown) => { render: () => { asPng: () => Uint8Array } };
  };
  const r = new resvg.Resvg(svg, {
    fitTo: { mode: 'zoom', value: 2 },
    font: { loadSystemFonts: true },
    background: 'white',
  });
  await writeFile(file, r.render().asPng());
}
