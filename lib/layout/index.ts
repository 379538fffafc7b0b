export {
  checkBlockIndex,
  describeKvLayout,
  kvBlockBytes,
  kvDims,
  kvDtypeBytes,
  type KvDim,
  type KvDtype,
  type KvLayout,
  type KvLayoutForm,
  type KvLayoutSpec,
  type KvPlane,
  type KvShape,
  type KvTensorRef,
} from './kv-layout.js';
export {
  KV_SEGMENT_STRIDE,
  KvCopyPlan,
  planKvCopy,
  type KvPacking,
  type KvPlanOptions,
  type KvSegment,
} from './copy-plan.js';
export {
  appendGather,
  appendScatter,
  gatherBlocks,
  scatterBlocks,
  type KvCopyOptions,
  type KvCopyResult,
} from './host-copy.js';
