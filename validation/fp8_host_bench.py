"""Host and GPU time of one fp8 decode call's store passes (the write of its new row, the dequantisation of the
store) three ways: `eager`, kvquant.write then kvquant.dequantize as the executor's slots run them (on CUDA the row
write is fp8_triton's one kernel where its check passed: `row_write` says), `op_by_op`, the write's aten ops one by
one, and `scripted`, the one TorchScript call (kvquant.store_rows_and_dequantize); at Llama-3-8B's 8 KV heads; and
whether each leaves the same store bytes as `eager` (and the scripted call the same scratch). On the GPU machine,
with roofsim installed (validation/device_setup.sh):
    python3 validation/fp8_host_bench.py > "$OUT/fp8_host_bench.json"
"""

from __future__ import annotations

import json
import statistics
import time

import torch
from roofsim.executor import kvquant
from roofsim.executor.timing import QUEUE_CYCLES, cuda_time_s


def bench(past: int, steps: int = 40, heads: int = 8, d: int = 128) -> dict:
    lay = kvquant.Layout(batch=1, heads=heads, head_dim=d)
    prefix = torch.randn(past, 1, 2, heads, d, device="cuda", dtype=torch.bfloat16)
    stores = []
    for _ in range(3):  # the same prefix in each, so that their bytes can be compared
        buf = torch.zeros(lay.nbytes(past + steps + 1), dtype=torch.uint8, device="cuda")
        st = kvquant.Store(lay, buf)
        kvquant.write(lay, st, 0, prefix)
        stores.append(st)
    scratch = [
        torch.empty(kvquant.scratch_numel(lay, past + steps + 1), device="cuda", dtype=torch.bfloat16)
        for _ in range(3)
    ]
    news = [torch.randn(1, 1, 2, heads, d, device="cuda", dtype=torch.bfloat16) for _ in range(steps)]

    def eager(i: int):
        kvquant.write(lay, stores[0], past + i, news[i])
        return kvquant.dequantize(lay, stores[0], past + i + 1, scratch[0])

    def op_by_op(i: int):  # the write's aten ops one by one, where `eager` may run the fused kernel on CUDA
        kvquant._write_op_by_op(stores[2], past + i, news[i])
        return kvquant.dequantize(lay, stores[2], past + i + 1, scratch[2])

    def scripted(i: int):
        return kvquant.store_rows_and_dequantize(stores[1], past + i, news[i], scratch[1])

    issue = {"eager": [], "scripted": [], "op_by_op": []}
    same = {"scripted": True, "op_by_op": True}  # each path's store against eager's, after every call
    for i in range(steps):
        for name, fn in (("eager", eager), ("scripted", scripted), ("op_by_op", op_by_op)):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn(i)
            issue[name].append(time.perf_counter() - t0)
            torch.cuda.synchronize()
        for name, st in (("scripted", stores[1]), ("op_by_op", stores[2])):
            same[name] = same[name] and bool(torch.equal(stores[0].buf, st.buf))
    n = past + steps
    scratch_same = bool(
        torch.equal(scratch[0][: kvquant.scratch_numel(lay, n)], scratch[1][: kvquant.scratch_numel(lay, n)])
    )
    gpu = {
        "eager": cuda_time_s(lambda: eager(steps - 1), sleep_cycles=QUEUE_CYCLES),
        "scripted": cuda_time_s(lambda: scripted(steps - 1), sleep_cycles=QUEUE_CYCLES),
        "op_by_op": cuda_time_s(lambda: op_by_op(steps - 1), sleep_cycles=QUEUE_CYCLES),
        "eager_no_sleep": cuda_time_s(lambda: eager(steps - 1)),
    }
    return {
        "past": past,
        "row_write": kvquant.row_writes_used(),
        "host_issue_us_median": {k: statistics.median(v[5:]) * 1e6 for k, v in issue.items()},
        "gpu_us": {k: v * 1e6 for k, v in gpu.items()},
        "same_store_as_eager": same,
        "same_scratch_eager_scripted": scratch_same,
    }


if __name__ == "__main__":
    print(json.dumps([bench(p) for p in (16384, 65536)], indent=1))
