/** Whether this machine has a GPU kvtier can drive; the GPU tests skip elsewhere, saying why. */
import { probe } from '../../lib/core/probe.js';

const report = probe();
export const gpuReason = report.cuda.available
  ? ''
  : `no usable CUDA GPU: ${report.cuda.reason ?? 'unknown'}`;
export const hasGpu = gpuReason === '';
if (!hasGpu) console.warn(`skipped: GPU tests (${gpuReason})`);
export const cufileReason = report.cufile.available
  ? ''
  : `cuFile not loadable: ${report.cufile.reason ?? 'unknown'}`;
