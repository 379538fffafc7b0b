"""The peers `kvtier bench gpu` measures itself against, run in the same session on the same GPU.

Reads one JSON request on argv[1], prints one JSON result. Needs PyTorch with CUDA (present on the
GPU hosts kvtier is checked on); never installs anything.
  {"op": "copy", "sizes": [...], "trials": N, "bytesPerTrial": B}
      pinned host -> device (tensor.copy_(non_blocking=True)) and back, timed with CUDA events
  {"op": "file", "path": P, "bytes": B, "chunk": C, "trials": N}
      os.preadv (O_DIRECT) into pinned memory, then copy to the GPU, double-buffered
  {"op": "prefill", "tokens": T, "layers": L}
      one Llama-3-8B decoder layer (random bf16 weights, causal SDPA) over T tokens, times L,
      and the bf16 matrix-multiply rate
"""
import json
import os
import statistics
import sys
import time

import torch


def timed(fn, reps):
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1000.0


def copy(req):
    out = []
    for size in req["sizes"]:
        reps = max(4, req["bytesPerTrial"] // size)
        host = torch.empty(size, dtype=torch.uint8, pin_memory=True)
        host.random_(0, 256)
        dev = torch.empty(size, dtype=torch.uint8, device="cuda")
        back = torch.empty(size, dtype=torch.uint8, pin_memory=True)
        h2d = lambda: dev.copy_(host, non_blocking=True)
        d2h = lambda: back.copy_(dev, non_blocking=True)
        timed(h2d, 2)
        timed(d2h, 2)
        for op, fn in (("h2d", h2d), ("d2h", d2h)):
            secs = statistics.median(timed(fn, reps) / reps for _ in range(req["trials"]))
            out.append({"op": op, "size": size, "gbps": size / secs / 1e9})
        assert torch.equal(back, host)
        del host, dev, back
    return {"rows": out, "torch": torch.__version__}


def file_read(req):
    path, total, chunk = req["path"], req["bytes"], req["chunk"]
    dev = torch.empty(total, dtype=torch.uint8, device="cuda")
    bufs = [torch.empty(chunk, dtype=torch.uint8, pin_memory=True) for _ in range(2)]
    events = [torch.cuda.Event() for _ in range(2)]
    stream = torch.cuda.Stream()
    times = []
    for _ in range(req["trials"]):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.cuda.stream(stream):
            for i, off in enumerate(range(0, total, chunk)):
                k = i % 2
                events[k].synchronize()
                n = os.preadv(fd, [memoryview(bufs[k].numpy())], off)
                dev[off : off + n].copy_(bufs[k][:n], non_blocking=True)
                events[k].record(stream)
        stream.synchronize()
        times.append(time.perf_counter() - t0)
        os.close(fd)
    return {"gbps": total / statistics.median(times) / 1e9}


def prefill(req):
    # Llama-3-8B: hidden 4096, 32 query heads and 8 KV heads of 128, MLP 14336, 32 layers.
    t, hidden, heads, kv_heads, hd, mlp = req["tokens"], 4096, 32, 8, 128, 14336
    dt = torch.bfloat16
    g = torch.Generator(device="cuda").manual_seed(1)
    w = lambda *s: torch.randn(*s, device="cuda", dtype=dt, generator=g) * 0.02
    wq, wk, wv, wo = w(hidden, heads * hd), w(hidden, kv_heads * hd), w(hidden, kv_heads * hd), w(heads * hd, hidden)
    w1, w3, w2 = w(hidden, mlp), w(hidden, mlp), w(mlp, hidden)
    x = w(t, hidden)

    def layer():
        q = (x @ wq).view(t, heads, hd).transpose(0, 1)
        k = (x @ wk).view(t, kv_heads, hd).transpose(0, 1)
        v = (x @ wv).view(t, kv_heads, hd).transpose(0, 1)
        a = torch.nn.functional.scaled_dot_product_attention(
            q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0), is_causal=True, enable_gqa=True
        )
        h = x + a.squeeze(0).transpose(0, 1).reshape(t, heads * hd) @ wo
        return h + (torch.nn.functional.silu(h @ w1) * (h @ w3)) @ w2

    with torch.no_grad():
        timed(layer, 1)
        layer_s = statistics.median(timed(layer, 1) for _ in range(3))
        a, b = w(8192, 8192), w(8192, 8192)
        timed(lambda: a @ b, 3)
        mm_s = statistics.median(timed(lambda: a @ b, 10) / 10 for _ in range(3))
    return {
        "layerSeconds": layer_s,
        "prefillSeconds": layer_s * req["layers"],
        "matmulTflops": 2 * 8192**3 / mm_s / 1e12,
    }


if __name__ == "__main__":
    request = json.loads(sys.argv[1])
    ops = {"copy": copy, "file": file_read, "prefill": prefill}
    result = ops[request["op"]](request)
    result["device"] = torch.cuda.get_device_name(0)
    print(json.dumps(result))
