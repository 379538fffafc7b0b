/**
 * The verbs shim declares libibverbs' data-path types itself (native/shim/ibverbs_api.h) so the
 * addon needs no header and no link-time library. This compiles a program against both the
 * shim and the system's <infiniband/verbs.h> and checks every size, offset and constant the
 * transport relies on. It also runs the endpoint bring-up, which on a machine without an RDMA
 * device must fail with a reason, never crash.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { afterAll, describe, expect, it } from 'vitest';

import { native } from '../../lib/core/native.js';
import { prerequisite, tempDir } from '../helpers.js';

const shimDir = fileURLToPath(new URL('../../native/shim/', import.meta.url));
const header = '/usr/include/infiniband/verbs.h';
const dir = tempDir('kvtier-verbs-abi-');
afterAll(() => dir.remove());

const pairs: [string, string][] = [
  // [shim expression, header expression]
  ['sizeof(ibv::Sge)', 'sizeof(struct ibv_sge)'],
  ['sizeof(ibv::SendWr)', 'sizeof(struct ibv_send_wr)'],
  ['offsetof(ibv::SendWr, sgList)', 'offsetof(struct ibv_send_wr, sg_list)'],
  ['offsetof(ibv::SendWr, numSge)', 'offsetof(struct ibv_send_wr, num_sge)'],
  ['offsetof(ibv::SendWr, opcode)', 'offsetof(struct ibv_send_wr, opcode)'],
  ['offsetof(ibv::SendWr, sendFlags)', 'offsetof(struct ibv_send_wr, send_flags)'],
  ['offsetof(ibv::SendWr, wr)', 'offsetof(struct ibv_send_wr, wr)'],
  ['offsetof(ibv::SendWr, wr.rdma.rkey)', 'offsetof(struct ibv_send_wr, wr.rdma.rkey)'],
  ['sizeof(ibv::Wc)', 'sizeof(struct ibv_wc)'],
  ['offsetof(ibv::Wc, status)', 'offsetof(struct ibv_wc, status)'],
  ['offsetof(ibv::Wc, byteLen)', 'offsetof(struct ibv_wc, byte_len)'],
  ['sizeof(ibv::QpInitAttr)', 'sizeof(struct ibv_qp_init_attr)'],
  ['offsetof(ibv::QpInitAttr, cap)', 'offsetof(struct ibv_qp_init_attr, cap)'],
  ['offsetof(ibv::QpInitAttr, qpType)', 'offsetof(struct ibv_qp_init_attr, qp_type)'],
  ['sizeof(ibv::QpAttr)', 'sizeof(struct ibv_qp_attr)'],
  ['offsetof(ibv::QpAttr, destQpNum)', 'offsetof(struct ibv_qp_attr, dest_qp_num)'],
  ['offsetof(ibv::QpAttr, ahAttr)', 'offsetof(struct ibv_qp_attr, ah_attr)'],
  ['offsetof(ibv::QpAttr, ahAttr.dlid)', 'offsetof(struct ibv_qp_attr, ah_attr.dlid)'],
  ['offsetof(ibv::QpAttr, ahAttr.isGlobal)', 'offsetof(struct ibv_qp_attr, ah_attr.is_global)'],
  ['offsetof(ibv::QpAttr, ahAttr.portNum)', 'offsetof(struct ibv_qp_attr, ah_attr.port_num)'],
  ['offsetof(ibv::QpAttr, ahAttr.grh.sgidIndex)', 'offsetof(struct ibv_qp_attr, ah_attr.grh.sgid_index)'],
  ['offsetof(ibv::QpAttr, pkeyIndex)', 'offsetof(struct ibv_qp_attr, pkey_index)'],
  ['offsetof(ibv::QpAttr, maxRdAtomic)', 'offsetof(struct ibv_qp_attr, max_rd_atomic)'],
  ['offsetof(ibv::QpAttr, maxDestRdAtomic)', 'offsetof(struct ibv_qp_attr, max_dest_rd_atomic)'],
  ['offsetof(ibv::QpAttr, minRnrTimer)', 'offsetof(struct ibv_qp_attr, min_rnr_timer)'],
  ['offsetof(ibv::QpAttr, portNum)', 'offsetof(struct ibv_qp_attr, port_num)'],
  ['offsetof(ibv::QpAttr, timeout)', 'offsetof(struct ibv_qp_attr, timeout)'],
  ['offsetof(ibv::QpAttr, rnrRetry)', 'offsetof(struct ibv_qp_attr, rnr_retry)'],
  ['offsetof(ibv::Mr, lkey)', 'offsetof(struct ibv_mr, lkey)'],
  ['offsetof(ibv::Mr, rkey)', 'offsetof(struct ibv_mr, rkey)'],
  ['offsetof(ibv::Qp, qpNum)', 'offsetof(struct ibv_qp, qp_num)'],
  ['offsetof(ibv::PortAttrHead, state)', 'offsetof(struct ibv_port_attr, state)'],
  ['offsetof(ibv::PortAttrHead, activeMtu)', 'offsetof(struct ibv_port_attr, active_mtu)'],
  ['offsetof(ibv::PortAttrHead, lid)', 'offsetof(struct ibv_port_attr, lid)'],
  ['offsetof(ibv::PortAttrHead, linkLayer)', 'offsetof(struct ibv_port_attr, link_layer)'],
  ['(ibv::kPortAttrBytes >= sizeof(struct ibv_port_attr))', '1'],
  ['offsetof(ibv::ContextHead, ops) + ibv::kOpsPollCq * sizeof(void*)', 'offsetof(struct ibv_context, ops.poll_cq)'],
  ['offsetof(ibv::ContextHead, ops) + ibv::kOpsPostSend * sizeof(void*)', 'offsetof(struct ibv_context, ops.post_send)'],
  ['(sizeof(ibv::ContextHead) <= offsetof(struct ibv_context, cmd_fd))', '1'],
  ['ibv::kQptRc', 'IBV_QPT_RC'],
  ['ibv::kQpsInit', 'IBV_QPS_INIT'],
  ['ibv::kQpsRtr', 'IBV_QPS_RTR'],
  ['ibv::kQpsRts', 'IBV_QPS_RTS'],
  ['ibv::kQpsErr', 'IBV_QPS_ERR'],
  ['ibv::kWrRdmaWrite', 'IBV_WR_RDMA_WRITE'],
  ['ibv::kWrRdmaRead', 'IBV_WR_RDMA_READ'],
  ['ibv::kSendSignaled', 'IBV_SEND_SIGNALED'],
  ['ibv::kAccessLocalWrite', 'IBV_ACCESS_LOCAL_WRITE'],
  ['ibv::kAccessRemoteWrite', 'IBV_ACCESS_REMOTE_WRITE'],
  ['ibv::kAccessRemoteRead', 'IBV_ACCESS_REMOTE_READ'],
  ['ibv::kPortActive', 'IBV_PORT_ACTIVE'],
  ['ibv::kLinkLayerEthernet', 'IBV_LINK_LAYER_ETHERNET'],
  ['ibv::kWcSuccess', 'IBV_WC_SUCCESS'],
  ['ibv::kWcLocProtErr', 'IBV_WC_LOC_PROT_ERR'],
  ['ibv::kWcWrFlushErr', 'IBV_WC_WR_FLUSH_ERR'],
  ['ibv::kWcRemAccessErr', 'IBV_WC_REM_ACCESS_ERR'],
  ['ibv::kWcRetryExcErr', 'IBV_WC_RETRY_EXC_ERR'],
  ['ibv::kMtu1024', 'IBV_MTU_1024'],
  ['ibv::kQpState', 'IBV_QP_STATE'],
  ['ibv::kQpAccessFlags', 'IBV_QP_ACCESS_FLAGS'],
  ['ibv::kQpPkeyIndex', 'IBV_QP_PKEY_INDEX'],
  ['ibv::kQpPort', 'IBV_QP_PORT'],
  ['ibv::kQpAv', 'IBV_QP_AV'],
  ['ibv::kQpPathMtu', 'IBV_QP_PATH_MTU'],
  ['ibv::kQpTimeout', 'IBV_QP_TIMEOUT'],
  ['ibv::kQpRetryCnt', 'IBV_QP_RETRY_CNT'],
  ['ibv::kQpRnrRetry', 'IBV_QP_RNR_RETRY'],
  ['ibv::kQpRqPsn', 'IBV_QP_RQ_PSN'],
  ['ibv::kQpMaxQpRdAtomic', 'IBV_QP_MAX_QP_RD_ATOMIC'],
  ['ibv::kQpMinRnrTimer', 'IBV_QP_MIN_RNR_TIMER'],
  ['ibv::kQpSqPsn', 'IBV_QP_SQ_PSN'],
  ['ibv::kQpMaxDestRdAtomic', 'IBV_QP_MAX_DEST_RD_ATOMIC'],
  ['ibv::kQpDestQpn', 'IBV_QP_DEST_QPN'],
];

function compiler(): string | undefined {
  for (const cxx of [process.env.CXX ?? 'c++', 'g++']) {
    if (spawnSync(cxx, ['--version']).status === 0) return cxx;
  }
  return undefined;
}

describe('verbs shim ABI', () => {
  it('matches <infiniband/verbs.h>: every size, offset and constant the transport uses', () => {
    const cxx = compiler();
    if (!prerequisite(cxx !== undefined, 'no C++ compiler to check the verbs shim against')) return;
    if (!prerequisite(existsSync(header), `${header} missing (apt-get install libibverbs-dev)`)) {
      return;
    }
    const src = join(dir.path, 'abi.cc');
    const lines = pairs.map(
      ([mine, theirs]) =>
        `static_assert(static_cast<long>(${mine}) == static_cast<long>(${theirs}), ${JSON.stringify(`${mine} == ${theirs}`)});`,
    );
    writeFileSync(
      src,
      [
        '#include <cstddef>',
        '#include <infiniband/verbs.h>',
        '#include "ibverbs_api.h"',
        'namespace ibv = kvtier::shim::ibv;',
        ...lines,
        'int main() { return 0; }',
        '',
      ].join('\n'),
    );
    const out = join(dir.path, 'abi');
    let error = '';
    try {
      execFileSync(cxx!, ['-std=c++20', '-Wno-invalid-offsetof', '-I', shimDir, src, '-o', out], {
        stdio: 'pipe',
      });
    } catch (e) {
      error = String((e as { stderr?: Buffer }).stderr ?? e);
    }
    expect(error).toBe('');
  });

  it('the endpoint bring-up reports why verbs cannot run here instead of failing hard', () => {
    const probe = native().verbsProbe({});
    const devices = native().probe().ibverbs.devices.length;
    if (probe.available) {
      expect(probe.device).toBeTruthy();
      return;
    }
    expect(probe.reason).toMatch(devices === 0 ? /device|ibv_get_device_list|libibverbs/ : /./);
    expect(native().verbsProbe({ device: 'kvtier-no-such-device' }).available).toBe(false);
    expect(() => native().verbsProbe({ port: 0 })).toThrow(/port/);
  });
});
