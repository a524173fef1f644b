"""Where the host's time goes in a plan's decode steps: cProfile over the decode phase of `run_plan` (from the
end of the prefill's last chunk to the last decode step), for each plan given, on random weights. A host-bound
plan's step is the host's issue time, so the functions with the most own time say what to make cheaper, and two
plans side by side (bf16 and fp8, say) say what one costs more than the other.

    cd /tmp && python REPO/validation/profile_host.py --context 16384 --gen 8 --out $OUT/host \
        --plan '{"family": "head_offload", "prefill_chunk": 8192}' \
        --plan '{"family": "head_offload", "prefill_chunk": 8192, "kv_dtype": "fp8_e4m3"}'

Writes OUT/host-<i>.txt (pstats, by own time and by cumulative time) and OUT/host.json (per plan: decode step
times, the profiled seconds, the top functions by own time). A diagnostic: nothing in roofsim reads it.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
from pathlib import Path

from roofsim.executor.models import load_model
from roofsim.executor.progress import Silent
from roofsim.executor.runner import run_plan

from roofsim.plan import plan_from_dict


class _DecodeProfiler(Silent):
    """Profiles from the prefill's last chunk to the last decode step (Progress.step is called between forwards,
    after the device has synchronised)."""

    def __init__(self, gen: int):
        super().__init__()
        self.prof = cProfile.Profile()
        self.gen = gen
        self.on = False

    def step(self, what: str, i: int, n: int) -> None:
        if what == "prefill chunk" and i + 1 == n and not self.on:
            self.prof.enable()
            self.on = True
        elif what == "decode step" and i + 1 == n and self.on:
            self.prof.disable()
            self.on = False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="llama-3-8b")
    ap.add_argument("--context", type=int, default=16384)
    ap.add_argument("--gen", type=int, default=8)
    ap.add_argument("--plan", action="append", required=True, help="a plan as JSON (repeat for several)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cuda", help="cpu: check the script (fp32)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import torch

    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    model, name = load_model(
        args.model, device=args.device, dtype=dtype, max_positions=args.context + args.gen + 64
    )
    rows = []
    for i, text in enumerate(args.plan):
        plan = plan_from_dict(json.loads(text))
        prof = _DecodeProfiler(args.gen)
        r = run_plan(
            plan, model, model_name=name, prompt_len=args.context, gen=args.gen, trace_steps=0, progress=prof
        )
        for sort in ("tottime", "cumulative"):
            buf = io.StringIO()
            pstats.Stats(prof.prof, stream=buf).sort_stats(sort).print_stats(40)
            with open(out / f"host-{i}.txt", "a") as f:
                f.write(f"== {text}\n== sorted by {sort}\n{buf.getvalue()}\n")
        stats = pstats.Stats(prof.prof)
        top = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:25]
        rows.append(
            {
                "plan": json.loads(text),
                "decode_step_s": r.trace.summary.decode.step_s,
                "profiled_s": stats.total_tt,
                "top_own_s": [
                    {
                        "fn": f"{k[0].split('/')[-1]}:{k[1]}:{k[2]}",
                        "calls": v[1],
                        "own_s": v[2],
                        "cum_s": v[3],
                    }
                    for k, v in top
                ],
            }
        )
        print(json.dumps({k: rows[-1][k] for k in ("plan", "profiled_s")}), flush=True)
        (out / "host.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
