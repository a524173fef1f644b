"""Does the executor's chunked-prefill attention lose efficiency when a call has few query rows? The planner's
short chunks with one-head slots (l3-planner-128k-24gb's head_offload pick: 2048-token chunks, one KV head per
call) measured 26% (H100) and 35% (H200) slower prefill than predicted at the one calibrated efficiency, which
comes from calls of 8192-16384 tokens. Times the executor's own call (attend_parts over a chunk after a past, as
calibrate does) by KV heads per call, chunk and past; prints FLOP/s over the datasheet peak and the query rows
(KV heads x group x chunk, the GQA-folded rows the kernel tiles). Writes OUT/prefill_attn_shapes.json.

    python validation/prefill_attn_shapes.py --out $OUT     # GPU machine, after . validation/device_setup.sh
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from roofsim.executor import attention
from roofsim.executor.calibrate import chunk_call

from roofsim.specs import load_gpu, load_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="llama-3-8b")
    ap.add_argument("--gpu", default="h200", help="the spec whose bf16 peak the efficiency is over")
    ap.add_argument("--out", default=".")
    args = ap.parse_args()
    m, peak = load_model(args.model), load_gpu(args.gpu).compute.bf16_tflops.value * 1e12
    g, d = m.n_heads // m.n_kv_heads, m.head_dim
    # the kernel race first, on calibrate's first prefill call (the whole layer's causal 8192-token chunk), so
    # that the calls below run the kernel a run and the calibration run (the race's winner, not the first kernel)
    chunk_call(m.n_kv_heads, g, d, 8192, 0)
    winner = dict(attention._raced)
    print(f"kernel race: {winner}")
    rows = []
    for heads in (1, 2, 4, m.n_kv_heads):
        for C in (1024, 2048, 4096, 8192, 16384):
            for P in (24576, 98304):
                t, flops = chunk_call(heads, g, d, C, P)
                row = {"kv_heads": heads, "chunk": C, "past": P, "rows": heads * g * C, "seconds": t}
                row["efficiency"] = flops / t / peak
                rows.append(row)
                print(
                    f"{heads} kv heads, chunk {C:5d} after {P:6d} (rows {row['rows']:6d}): "
                    f"{t * 1e3:8.3f} ms, efficiency {row['efficiency']:.3f}",
                    flush=True,
                )
    Path(args.out, "prefill_attn_shapes.json").write_text(
        json.dumps(
            {
                "command": f"python validation/prefill_attn_shapes.py --model {args.model}",
                "race": {str(k): v for k, v in winner.items()},
                "calls": rows,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
