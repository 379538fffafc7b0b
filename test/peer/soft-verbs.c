/*
 * "Soft verbs": a stub libibverbs.so.1 for tests, NOT an RDMA provider. test/peer/verbs.test.ts
 * compiles it against the system's <infiniband/verbs.h> and puts it first on the loader path of
 * child processes (a `kvtier serve` and a client), so that everything kvtier does above the device
 * runs for real: queue pair bring-up from the addresses exchanged on the control channel, memory
 * registration, one-sided READ and WRITE with remote keys, completion polling and error
 * completions. Bytes really move between the two processes: a READ is process_vm_readv from the
 * peer, a WRITE process_vm_writev into it.
 *
 * - The peer's process id travels in the GID (bytes 8..11; bytes 12..15 spell "soft"), and the
 *   port reports an Ethernet link layer so that kvtier always routes by GID.
 * - Each process lists its memory registrations (address, length, rkey, access, live) in
 *   $KVTIER_SOFT_VERBS_DIR/<pid>.mrs; the initiator checks the remote key, the bounds and the
 *   access flags there, as a NIC would, and completes with IBV_WC_REM_ACCESS_ERR otherwise.
 * - Likewise each process lists its queue pairs' access flags (IBV_QP_ACCESS_FLAGS at INIT) in
 *   $KVTIER_SOFT_VERBS_DIR/<pid>.qps; a READ or WRITE also needs the peer's (responder's) queue
 *   pair to allow it, as on a NIC.
 * - A peer process that is gone completes with IBV_WC_RETRY_EXC_ERR; after a failed completion
 *   the queue pair is in the error state and later work requests flush (IBV_WC_WR_FLUSH_ERR).
 * - Transfers run inside ibv_post_send, so completions are ready at the next poll.
 * - Reading another process needs ptrace rights over it: same user, and Yama's ptrace_scope at
 *   most 1 (each process allows any peer with PR_SET_PTRACER).
 * - $KVTIER_SOFT_VERBS_HOLD (tests of faults): while that file exists, transfers wait, after
 *   creating "<that file>.reached".
 * - $KVTIER_SOFT_VERBS_POLL_FAIL (tests of faults): while that file exists, ibv_poll_cq fails
 *   (returns -1) and leaves the completions queued.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <infiniband/verbs.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#undef ibv_get_device_list
#undef ibv_query_port
#undef ibv_reg_mr

struct soft_mr_record {
  uint64_t addr;
  uint64_t length;
  uint32_t rkey;
  uint32_t access;
  uint32_t live;
  uint32_t pad;
};

struct soft_qp_record {
  uint32_t qpn;
  uint32_t access;
  uint32_t live;
  uint32_t pad;
};

struct soft_cq {
  struct ibv_cq cq;
  pthread_mutex_t mu;
  struct ibv_wc *ring;
  int cap, head, count;
};

struct soft_qp {
  struct ibv_qp qp;
  struct soft_cq *cq;
  int state;
  pid_t remote;
  uint32_t remote_qpn;
};

struct soft_mr {
  struct ibv_mr mr;
  long slot;
};

static pthread_mutex_t registry_mu = PTHREAD_MUTEX_INITIALIZER;
static long registry_slots;
static uint32_t next_key = 0x100;
#define FIRST_QPN 0x40u
static uint32_t next_qpn = FIRST_QPN;
static struct ibv_device *the_device;

/* Under Yama's ptrace_scope 1 only an ancestor may read another process's memory; the client and
 * the server are siblings, so each lets any process of its user in (fails harmlessly without
 * Yama). */
__attribute__((constructor)) static void allow_peers(void) {
  (void)prctl(PR_SET_PTRACER, PR_SET_PTRACER_ANY, 0, 0, 0);
}

static const char *registry_dir(void) {
  const char *d = getenv("KVTIER_SOFT_VERBS_DIR");
  return d && *d ? d : "/tmp";
}

static void registry_path(pid_t pid, char *out, size_t n) {
  snprintf(out, n, "%s/%d.mrs", registry_dir(), (int)pid);
}

struct ibv_device **ibv_get_device_list(int *num) {
  struct ibv_device **list = calloc(2, sizeof(*list));
  if (!list) return NULL;
  if (!the_device) {
    the_device = calloc(1, sizeof(*the_device));
    if (!the_device) {
      free(list);
      return NULL;
    }
    snprintf(the_device->name, sizeof(the_device->name), "softverbs0");
  }
  list[0] = the_device;
  if (num) *num = 1;
  return list;
}

void ibv_free_device_list(struct ibv_device **list) { free(list); }

const char *ibv_get_device_name(struct ibv_device *device) { return device->name; }

__be64 ibv_get_device_guid(struct ibv_device *device) {
  (void)device;
  return 0;
}

static int soft_post_send(struct ibv_qp *qp, struct ibv_send_wr *wr, struct ibv_send_wr **bad);
static int soft_poll_cq(struct ibv_cq *cq, int n, struct ibv_wc *wc);

struct ibv_context *ibv_open_device(struct ibv_device *device) {
  struct ibv_context *ctx = calloc(1, sizeof(*ctx));
  if (!ctx) return NULL;
  ctx->device = device;
  ctx->ops.post_send = soft_post_send;
  ctx->ops.poll_cq = soft_poll_cq;
  return ctx;
}

int ibv_close_device(struct ibv_context *ctx) {
  free(ctx);
  return 0;
}

int ibv_query_port(struct ibv_context *ctx, uint8_t port, struct _compat_ibv_port_attr *compat) {
  (void)ctx;
  /* kvtier hands a buffer of the full structure's size (ibverbs_api.h, kPortAttrBytes). */
  struct ibv_port_attr *attr = (struct ibv_port_attr *)compat;
  if (port != 1) return EINVAL;
  memset(attr, 0, sizeof(*attr));
  attr->state = IBV_PORT_ACTIVE;
  attr->max_mtu = IBV_MTU_4096;
  attr->active_mtu = IBV_MTU_4096;
  attr->lid = 0;
  attr->link_layer = IBV_LINK_LAYER_ETHERNET;
  return 0;
}

int ibv_query_gid(struct ibv_context *ctx, uint8_t port, int index, union ibv_gid *gid) {
  (void)ctx;
  (void)port;
  (void)index;
  uint32_t pid = (uint32_t)getpid();
  memset(gid, 0, sizeof(*gid));
  gid->raw[0] = 0xfe;
  gid->raw[1] = 0x80;
  memcpy(gid->raw + 8, &pid, 4);
  memcpy(gid->raw + 12, "soft", 4);
  return 0;
}

struct ibv_pd *ibv_alloc_pd(struct ibv_context *ctx) {
  struct ibv_pd *pd = calloc(1, sizeof(*pd));
  if (pd) pd->context = ctx;
  return pd;
}

int ibv_dealloc_pd(struct ibv_pd *pd) {
  free(pd);
  return 0;
}

static int write_record(long slot, const struct soft_mr_record *r) {
  char path[512];
  registry_path(getpid(), path, sizeof(path));
  /* The first registration starts the list afresh: a file left by an earlier process with the
   * same id must not lend it keys. */
  int fd = open(path, O_WRONLY | O_CREAT | (slot == 0 ? O_TRUNC : 0), 0600);
  if (fd < 0) return -1;
  ssize_t n = pwrite(fd, r, sizeof(*r), (off_t)(slot * (long)sizeof(*r)));
  close(fd);
  return n == (ssize_t)sizeof(*r) ? 0 : -1;
}

static int write_qp_record(uint32_t qpn, uint32_t access, uint32_t live) {
  char path[512];
  snprintf(path, sizeof(path), "%s/%d.qps", registry_dir(), (int)getpid());
  long slot = (long)(qpn - FIRST_QPN);
  int fd = open(path, O_WRONLY | O_CREAT | (slot == 0 ? O_TRUNC : 0), 0600);
  if (fd < 0) return -1;
  struct soft_qp_record r = {qpn, access, live, 0};
  ssize_t n = pwrite(fd, &r, sizeof(r), (off_t)(slot * (long)sizeof(r)));
  close(fd);
  return n == (ssize_t)sizeof(r) ? 0 : -1;
}

/* Whether the peer's queue pair qpn grants `access` to incoming READs or WRITEs. */
static int remote_qp_allows(pid_t pid, uint32_t qpn, int access) {
  char path[512];
  snprintf(path, sizeof(path), "%s/%d.qps", registry_dir(), (int)pid);
  FILE *f = fopen(path, "rb");
  if (!f) return 0;
  struct soft_qp_record r;
  int ok = fseek(f, (long)(qpn - FIRST_QPN) * (long)sizeof(r), SEEK_SET) == 0 &&
           fread(&r, sizeof(r), 1, f) == 1 && r.live && r.qpn == qpn &&
           (r.access & (uint32_t)access);
  fclose(f);
  return ok;
}

struct ibv_mr *ibv_reg_mr(struct ibv_pd *pd, void *addr, size_t length, int access) {
  struct soft_mr *m = calloc(1, sizeof(*m));
  if (!m) {
    errno = ENOMEM;
    return NULL;
  }
  pthread_mutex_lock(&registry_mu);
  m->slot = registry_slots++;
  uint32_t key = next_key++ * 2654435761u;
  pthread_mutex_unlock(&registry_mu);
  m->mr.context = pd->context;
  m->mr.pd = pd;
  m->mr.addr = addr;
  m->mr.length = length;
  m->mr.lkey = key;
  m->mr.rkey = key;
  struct soft_mr_record r = {(uint64_t)(uintptr_t)addr, length, key, (uint32_t)access, 1, 0};
  if (write_record(m->slot, &r) != 0) {
    free(m);
    errno = EIO;
    return NULL;
  }
  return &m->mr;
}

int ibv_dereg_mr(struct ibv_mr *mr) {
  struct soft_mr *m = (struct soft_mr *)mr;
  struct soft_mr_record r = {0, 0, 0, 0, 0, 0};
  int rc = write_record(m->slot, &r) == 0 ? 0 : EIO;
  free(m);
  return rc;
}

struct ibv_cq *ibv_create_cq(struct ibv_context *ctx, int cqe, void *cq_context,
                             struct ibv_comp_channel *channel, int vector) {
  (void)channel;
  (void)vector;
  struct soft_cq *c = calloc(1, sizeof(*c));
  if (!c) return NULL;
  c->ring = calloc((size_t)cqe, sizeof(struct ibv_wc));
  if (!c->ring) {
    free(c);
    return NULL;
  }
  c->cap = cqe;
  pthread_mutex_init(&c->mu, NULL);
  c->cq.context = ctx;
  c->cq.cq_context = cq_context;
  c->cq.cqe = cqe;
  return &c->cq;
}

int ibv_destroy_cq(struct ibv_cq *cq) {
  struct soft_cq *c = (struct soft_cq *)cq;
  pthread_mutex_destroy(&c->mu);
  free(c->ring);
  free(c);
  return 0;
}

struct ibv_qp *ibv_create_qp(struct ibv_pd *pd, struct ibv_qp_init_attr *attr) {
  if (attr->qp_type != IBV_QPT_RC) {
    errno = EINVAL;
    return NULL;
  }
  struct soft_qp *q = calloc(1, sizeof(*q));
  if (!q) return NULL;
  q->qp.context = pd->context;
  q->qp.pd = pd;
  q->qp.send_cq = attr->send_cq;
  q->qp.recv_cq = attr->recv_cq;
  pthread_mutex_lock(&registry_mu);
  q->qp.qp_num = next_qpn++;
  pthread_mutex_unlock(&registry_mu);
  q->qp.qp_type = IBV_QPT_RC;
  q->cq = (struct soft_cq *)attr->send_cq;
  q->state = IBV_QPS_RESET;
  return &q->qp;
}

int ibv_destroy_qp(struct ibv_qp *qp) {
  (void)write_qp_record(qp->qp_num, 0, 0);
  free(qp);
  return 0;
}

int ibv_modify_qp(struct ibv_qp *qp, struct ibv_qp_attr *attr, int mask) {
  struct soft_qp *q = (struct soft_qp *)qp;
  if (!(mask & IBV_QP_STATE)) return EINVAL;
  if (mask & IBV_QP_ACCESS_FLAGS) {
    if (write_qp_record(qp->qp_num, (uint32_t)attr->qp_access_flags, 1) != 0) return EIO;
  }
  if (attr->qp_state == IBV_QPS_RTR) {
    const uint8_t *raw = attr->ah_attr.grh.dgid.raw;
    if (!(mask & IBV_QP_AV) || !attr->ah_attr.is_global || memcmp(raw + 12, "soft", 4) != 0) {
      return EINVAL;  // soft verbs only routes by its own GIDs
    }
    uint32_t pid;
    memcpy(&pid, raw + 8, 4);
    q->remote = (pid_t)pid;
    if (!(mask & IBV_QP_DEST_QPN)) return EINVAL;
    q->remote_qpn = attr->dest_qp_num;
  }
  __atomic_store_n(&q->state, attr->qp_state, __ATOMIC_SEQ_CST);
  return 0;
}

/* The remote registration covering [addr, addr + len) with the access asked for, or 0. */
static int remote_allows(pid_t pid, uint64_t addr, uint32_t len, uint32_t rkey, int access) {
  char path[512];
  registry_path(pid, path, sizeof(path));
  FILE *f = fopen(path, "rb");
  if (!f) return 0;
  struct soft_mr_record r;
  int ok = 0;
  while (fread(&r, sizeof(r), 1, f) == 1) {
    if (r.live && r.rkey == rkey && (r.access & (uint32_t)access) && addr >= r.addr &&
        len <= r.length && addr - r.addr <= r.length - len) {
      ok = 1;
      break;
    }
  }
  fclose(f);
  return ok;
}

static void hold_if_asked(void) {
  const char *hold = getenv("KVTIER_SOFT_VERBS_HOLD");
  if (!hold || !*hold) return;
  struct stat st;
  if (stat(hold, &st) != 0) return;
  char reached[600];
  snprintf(reached, sizeof(reached), "%s.reached", hold);
  int fd = open(reached, O_WRONLY | O_CREAT, 0600);
  if (fd >= 0) close(fd);
  struct timespec ms = {0, 1000000};
  while (stat(hold, &st) == 0) nanosleep(&ms, NULL);
}

static enum ibv_wc_status transfer(struct soft_qp *q, struct ibv_send_wr *wr) {
  if (q->state != IBV_QPS_RTS) return IBV_WC_WR_FLUSH_ERR;
  if (wr->num_sge != 1) return IBV_WC_LOC_LEN_ERR;
  hold_if_asked();
  int read = wr->opcode == IBV_WR_RDMA_READ;
  uint64_t remote = wr->wr.rdma.remote_addr;
  uint32_t len = wr->sg_list[0].length;
  if (kill(q->remote, 0) != 0 && errno == ESRCH) return IBV_WC_RETRY_EXC_ERR;
  int access = read ? IBV_ACCESS_REMOTE_READ : IBV_ACCESS_REMOTE_WRITE;
  if (!remote_qp_allows(q->remote, q->remote_qpn, access) ||
      !remote_allows(q->remote, remote, len, wr->wr.rdma.rkey, access)) {
    return IBV_WC_REM_ACCESS_ERR;
  }
  uint64_t done = 0;
  while (done < len) {
    struct iovec local = {(char *)(uintptr_t)wr->sg_list[0].addr + done, len - done};
    struct iovec far = {(char *)(uintptr_t)remote + done, len - done};
    ssize_t n = read ? process_vm_readv(q->remote, &local, 1, &far, 1, 0)
                     : process_vm_writev(q->remote, &local, 1, &far, 1, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == ESRCH) return IBV_WC_RETRY_EXC_ERR;
    if (n <= 0) return IBV_WC_REM_ACCESS_ERR;
    done += (uint64_t)n;
  }
  return IBV_WC_SUCCESS;
}

static int soft_post_send(struct ibv_qp *qp, struct ibv_send_wr *wr, struct ibv_send_wr **bad) {
  struct soft_qp *q = (struct soft_qp *)qp;
  for (; wr; wr = wr->next) {
    int state = __atomic_load_n(&q->state, __ATOMIC_SEQ_CST);
    if (state != IBV_QPS_RTS && state != IBV_QPS_ERR) {
      *bad = wr;
      return EINVAL;
    }
    if (wr->opcode != IBV_WR_RDMA_READ && wr->opcode != IBV_WR_RDMA_WRITE) {
      *bad = wr;
      return EINVAL;
    }
    enum ibv_wc_status status = transfer(q, wr);
    if (status != IBV_WC_SUCCESS) __atomic_store_n(&q->state, IBV_QPS_ERR, __ATOMIC_SEQ_CST);
    struct soft_cq *c = q->cq;
    pthread_mutex_lock(&c->mu);
    if (c->count == c->cap) {
      pthread_mutex_unlock(&c->mu);
      *bad = wr;
      return ENOMEM;  // a real CQ would overrun; kvtier never posts more than it holds
    }
    struct ibv_wc *w = &c->ring[(c->head + c->count) % c->cap];
    memset(w, 0, sizeof(*w));
    w->wr_id = wr->wr_id;
    w->status = status;
    w->opcode = wr->opcode == IBV_WR_RDMA_READ ? IBV_WC_RDMA_READ : IBV_WC_RDMA_WRITE;
    w->byte_len = status == IBV_WC_SUCCESS ? wr->sg_list[0].length : 0;
    w->qp_num = qp->qp_num;
    c->count++;
    pthread_mutex_unlock(&c->mu);
  }
  return 0;
}

static int poll_should_fail(void) {
  const char *f = getenv("KVTIER_SOFT_VERBS_POLL_FAIL");
  if (!f || !*f) return 0;
  struct stat st;
  return stat(f, &st) == 0;
}

static int soft_poll_cq(struct ibv_cq *cq, int n, struct ibv_wc *wc) {
  struct soft_cq *c = (struct soft_cq *)cq;
  if (poll_should_fail()) return -1;
  pthread_mutex_lock(&c->mu);
  int got = 0;
  while (got < n && c->count > 0) {
    wc[got++] = c->ring[c->head];
    c->head = (c->head + 1) % c->cap;
    c->count--;
  }
  pthread_mutex_unlock(&c->mu);
  return got;
}
