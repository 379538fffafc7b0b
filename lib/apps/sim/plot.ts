/** Hit rate against capacity for several policies, with the infinite-capacity ceiling dashed. */
import { writeChart, type ChartRow } from '../plot.js';

export interface PlotPoint {
  policy: string;
  /** Capacity as a percentage of distinct blocks. */
  capacity: number;
  /** Prefix hit rate, 0..1. */
  hitRate: number;
}

const CEILING = 'ceiling (∞)';

/** The chart's rows: one line per policy, and the ceiling at every capacity plotted. */
export function plotRows(points: PlotPoint[], ceiling: number): ChartRow[] {
  return [
    ...points.map((p) => ({ series: p.policy, x: p.capacity, y: p.hitRate * 100 })),
    ...[...new Set(points.map((p) => p.capacity))].map((capacity) => ({
      series: CEILING,
      x: capacity,
      y: ceiling * 100,
    })),
  ];
}

export async function renderPlot(
  points: PlotPoint[],
  ceiling: number,
  title: string,
  file: string,
): Promise<void> {
  await writeChart(
    {
      title,
      mark: 'lines',
      xTitle: 'capacity (% of distinct blocks, log scale)',
      xScale: 'log',
      yTitle: 'prefix hit rate (%)',
      yDomain: [0, 100],
      seriesTitle: 'policy',
      dashed: [CEILING],
      rows: plotRows(points, ceiling),
    },
    file,
  );
}
