"""How long a window layer's prefill attention takes in the executor, and what else could do it: at the window
models' shapes (Gemma-3-12B, Gemma-3-27B, gpt-oss-20b), for a chunk after a full window,
- `banded`: executor/window.py's banded_attention's block path, its very first call in this process (wall and
  GPU time), then the median of three;
- `flash window`: window.flash_window, the one FlashAttention-2 call the executor makes on CUDA;
- `masked`: every block of W query rows (the GQA group folded in) against its 2W-1 keys in one memory-efficient
  call with a band mask (twice the band's FLOPs, no flips, copies or merges), its output checked against banded's;
- `plain`: the band's FLOPs as one unmasked call (the chunk's queries against W keys), the rate the model prices.
Prints one line per shape and chunk, writes OUT/window-probe.json. A diagnostic: nothing in roofsim reads it.

    cd /tmp && python REPO/validation/window_probe.py --out $OUT
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from roofsim.executor import window
from roofsim.executor.attention import attend
from roofsim.executor.window import banded_attention, flash_window
from torch.nn.attention import SDPBackend, sdpa_kernel

SHAPES = {  # name: (query heads, KV heads, head dim, window)
    "gemma-3-12b": (16, 8, 256, 1024),
    "gemma-3-27b": (32, 16, 128, 1024),
    "gpt-oss-20b": (64, 8, 64, 128),
}


def _gpu_s(fn) -> tuple[float, float]:
    """(GPU seconds between events around fn, wall seconds until it finished)."""
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    a.record()
    fn()
    b.record()
    b.synchronize()
    return a.elapsed_time(b) / 1e3, time.perf_counter() - t0


def masked_blocks(q, K, V, W: int, scale: float) -> torch.Tensor:
    """q [1, Hq, C, D] (C a multiple of W) after kept = W-1 rows: block b's W queries, GQA-folded, against keys
    bW .. bW+2W-2 of K (kept rows first), masked to the band (row i sees keys i .. i+W-1)."""
    _, Hq, C, D = q.shape
    Hkv = K.shape[1]
    G, nb = Hq // Hkv, C // W
    qb = q.reshape(Hkv, G, nb, W, D).permute(2, 0, 1, 3, 4).reshape(nb, Hkv, G * W, D)
    kb = K[0].unfold(1, 2 * W - 1, W).permute(1, 0, 3, 2).contiguous()  # [nb, Hkv, 2W-1, D]
    vb = V[0].unfold(1, 2 * W - 1, W).permute(1, 0, 3, 2).contiguous()
    i = torch.arange(W, device=q.device)[:, None]
    j = torch.arange(2 * W - 1, device=q.device)[None, :]
    band = ((j >= i) & (j <= i + W - 1)).repeat(G, 1)  # [G*W, 2W-1]
    with sdpa_kernel(
        [SDPBackend.EFFICIENT_ATTENTION]
    ):  # the public call pads the mask to the kernel's alignment
        out = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=band, scale=scale)
    return out.reshape(nb, Hkv, G, W, D).permute(1, 2, 0, 3, 4).reshape(1, Hq, C, D)


def probe(name: str, C: int) -> dict:
    Hq, Hkv, D, W = SHAPES[name]
    dev, dt, scale = "cuda", torch.bfloat16, D**-0.5
    g = torch.Generator(device=dev).manual_seed(0)
    q = torch.randn(1, C, Hq, D, device=dev, dtype=dt, generator=g).transpose(1, 2)
    K = torch.randn(1, Hkv, W - 1 + C, D, device=dev, dtype=dt, generator=g)
    V = torch.randn(1, Hkv, W - 1 + C, D, device=dev, dtype=dt, generator=g)
    flops = 4.0 * Hq * D * C * W  # the band: each query against W keys
    # banded_attention's block path: on CUDA in 16 bits it would take flash_window, timed apart below
    window._flash_window_checked[(torch.device(dev).type, dt, D)] = False
    row = {
        "model": name,
        "chunk": C,
        "heads": Hq,
        "kv_heads": Hkv,
        "head_dim": D,
        "window": W,
        "band_flops": flops,
    }
    first_gpu, first_wall = _gpu_s(lambda: banded_attention(q, K, V, W - 1, W, scale))
    row["banded_first_gpu_s"], row["banded_first_wall_s"] = first_gpu, first_wall
    row["banded_s"] = statistics.median(
        _gpu_s(lambda: banded_attention(q, K, V, W - 1, W, scale))[0] for _ in range(3)
    )
    ref = banded_attention(q, K, V, W - 1, W, scale)[0].float()
    try:
        masked_blocks(q, K, V, W, scale)
        row["masked_s"] = statistics.median(
            _gpu_s(lambda: masked_blocks(q, K, V, W, scale))[0] for _ in range(3)
        )
        got = masked_blocks(q, K, V, W, scale).float()
        row["masked_rel_err"] = float((got - ref).norm() / ref.norm())
    except (RuntimeError, NotImplementedError, torch.OutOfMemoryError) as e:
        row["masked_error"] = str(e).splitlines()[0][:200]
    try:  # FlashAttention-2's own sliding window: one call, keys bottom-right aligned, GQA native
        fw = lambda: flash_window(q, K, V, W, scale)  # noqa: E731
        fw()
        row["flash_window_s"] = statistics.median(_gpu_s(fw)[0] for _ in range(3))
        row["flash_window_rel_err"] = float((fw().float() - ref).norm() / ref.norm())
    except (RuntimeError, NotImplementedError, TypeError) as e:
        row["flash_window_error"] = str(e).splitlines()[0][:200]
    kw, vw = K[:, :, :W], V[:, :, :W]
    attend(q, kw, vw, causal=False, scale=scale)
    row["plain_s"] = statistics.median(
        _gpu_s(lambda: attend(q, kw, vw, causal=False, scale=scale))[0] for _ in range(3)
    )
    return row


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--chunks", default="32768,8192")
    args = ap.parse_args()
    rows = []
    for C in (int(c) for c in args.chunks.split(",")):
        for name in SHAPES:
            r = probe(name, C)
            rows.append(r)
            tf = lambda s, r=r: r["band_flops"] / s / 1e12  # noqa: E731
            masked = (
                f"masked {r['masked_s'] * 1e3:.2f} ms ({tf(r['masked_s']):.0f}, err {r['masked_rel_err']:.1e})"
                if "masked_s" in r
                else f"masked failed: {r.get('masked_error')}"
            )
            fw = r.get("flash_window_s")
            masked += (
                f"; flash window {fw * 1e3:.2f} ms ({tf(fw):.0f}, err {r['flash_window_rel_err']:.1e})"
                if fw
                else f"; flash window failed: {r.get('flash_window_error')}"
            )
            print(
                f"{name} C={C}: banded first {r['banded_first_gpu_s'] * 1e3:.1f} ms GPU / {r['banded_first_wall_s'] * 1e3:.1f} wall, "
                f"then {r['banded_s'] * 1e3:.2f} ms ({tf(r['banded_s']):.0f} TFLOP/s of the band); {masked}; "
                f"plain {r['plain_s'] * 1e3:.2f} ms ({tf(r['plain_s']):.0f})",
                flush=True,
            )
            torch.cuda.empty_cache()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "window-probe.json").write_text(
        json.dumps({"gpu": torch.cuda.get_device_name(), "rows": rows}, indent=1)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
