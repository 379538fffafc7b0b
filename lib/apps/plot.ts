/**
 * Charts for `--plot FILE`: rows {series, x, y} drawn with vega-lite (compiled to a vega view
 * rendered headless to SVG); PNG through resvg (a prebuilt binary shipped inside its npm package:
 * no browser, no canvas). Grouped bars for a bench's table, lines for sim's curves.
 */
import { writeFile } from 'node:fs/promises';

import { KvtierError } from '../index.js';

export interface ChartRow {
  /** One colour: kvtier, or the peer it is measured against. */
  series: string;
  x: string | number;
  y: number;
  /** Rows in different units go in different panels, side by side, each with its own scale. */
  panel?: string;
}

export interface Chart {
  title: string;
  xTitle: string;
  yTitle: string;
  rows: ChartRow[];
  /** `bars` (default): grouped by x in the order the rows give; `lines`: quantitative x. */
  mark?: 'bars' | 'lines';
  xScale?: 'linear' | 'log';
  yDomain?: [number, number];
  /** The legend's title (default: none). */
  seriesTitle?: string;
  /** Series drawn dashed (a line chart's reference, e.g. a ceiling). */
  dashed?: string[];
}

/** Refuses a --plot file that is neither .svg nor .png, before any work starts. */
export function checkPlotFile(file: string): 'svg' | 'png' {
  const lower = file.toLowerCase();
  if (lower.endsWith('.png')) return 'png';
  if (lower.endsWith('.svg')) return 'svg';
  throw new KvtierError('KVTIER_BAD_ARGUMENT', `--plot ${file}: the file must end in .svg or .png`);
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

function barSpec(chart: Chart): Record<string, unknown> {
  // sort: null keeps the x values in the order the bench measured them (1 MiB before 256 KiB
  // would be alphabetical); the series stay in first-seen order as well.
  const series = [...new Set(chart.rows.map((r) => r.series))];
  return {
    mark: { type: 'bar' },
    width: { step: Math.max(12, Math.min(28, 96 / series.length)) },
    height: 300,
    encoding: {
      x: {
        field: 'x',
        type: 'nominal',
        sort: null,
        title: chart.xTitle,
        axis: { labelAngle: -30, labelLimit: 240 },
      },
      xOffset: { field: 'series', type: 'nominal', sort: series },
      y: { field: 'y', type: 'quantitative', title: chart.yTitle },
      color: {
        field: 'series',
        type: 'nominal',
        sort: series,
        title: chart.seriesTitle ?? null,
      },
      tooltip: [{ field: 'series' }, { field: 'x' }, { field: 'y' }],
    },
  };
}

function lineSpec(chart: Chart): Record<string, unknown> {
  const dashed = chart.dashed ?? [];
  return {
    mark: { type: 'line', point: true },
    width: 560,
    height: 340,
    encoding: {
      x: {
        field: 'x',
        type: 'quantitative',
        ...(chart.xScale === 'log' ? { scale: { type: 'log' } } : {}),
        title: chart.xTitle,
      },
      y: {
        field: 'y',
        type: 'quantitative',
        ...(chart.yDomain ? { scale: { domain: chart.yDomain } } : {}),
        title: chart.yTitle,
      },
      color: { field: 'series', type: 'nominal', title: chart.seriesTitle ?? null },
      ...(dashed.length > 0
        ? {
            strokeDash: {
              condition: {
                test: `indexof(${JSON.stringify(dashed)}, datum.series) >= 0`,
                value: [4, 4],
              },
              value: [1, 0],
            },
          }
        : {}),
    },
  };
}

/** The vega-lite specification of a chart (exported for tests). */
export function chartSpec(chart: Chart): Record<string, unknown> {
  const inner = chart.mark === 'lines' ? lineSpec(chart) : barSpec(chart);
  const base = {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: chart.title,
    background: 'white',
    data: { values: chart.rows },
  };
  const panels = [...new Set(chart.rows.map((r) => r.panel).filter((p) => p !== undefined))];
  if (panels.length === 0) return { ...base, ...inner };
  // Panels hold different units (GB/s beside ms): one view each, side by side, each with its
  // own scales; the colours (the series) stay shared, so kvtier is one colour throughout.
  return {
    ...base,
    hconcat: panels.map((panel) => {
      const rows = chart.rows.filter((r) => r.panel === panel);
      const view =
        chart.mark === 'lines'
          ? lineSpec({ ...chart, yTitle: panel })
          : barSpec({ ...chart, rows, yTitle: panel });
      return { transform: [{ filter: { field: 'panel', equal: panel } }], ...view };
    }),
    resolve: { scale: { xOffset: 'independent' } },
  };
}

/** Renders a chart to SVG text. */
export async function chartSvg(chart: Chart): Promise<string> {
  const vl = (await load('vega-lite')) as { compile: (s: unknown) => { spec: unknown } };
  const vega = (await load('vega')) as {
    View: new (
      runtime: unknown,
      opts: { renderer: string },
    ) => { toSVG: () => Promise<string>; finalize: () => void };
    parse: (s: unknown) => unknown;
  };
  const view = new vega.View(vega.parse(vl.compile(chartSpec(chart)).spec), { renderer: 'none' });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}

/** Writes a chart to `file`, SVG or PNG by its extension. */
export async function writeChart(chart: Chart, file: string): Promise<void> {
  const kind = checkPlotFile(file);
  const svg = await chartSvg(chart);
  if (kind === 'svg') {
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
