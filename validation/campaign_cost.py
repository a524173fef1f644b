"""How long a campaign's device calls will take, before they run: each configuration's plans as `roofsim validate`
would choose them (the given plan, or the planner's pick, runners-up and every other family's best), each priced
with the profile: prefill + decode per token x gen, plus a run's cost outside them (model build, warm-up, capture,
exit; RUN_OVERHEAD_S, from the forked runs of docs/evidence.md#ev-heldout-h200). Nothing runs.

    python validation/campaign_cost.py validation/campaign-heldout2.toml \
        --gpu validation/results/h100/calibrated/h100-sxm-calibrated.toml
"""

from __future__ import annotations

import argparse
import sys

from roofsim.errors import UserError
from roofsim.limits import Limits
from roofsim.predict import predict
from roofsim.specs import load_gpu
from roofsim.specs.hardware import default_host_of
from roofsim.specs.model import load_model
from roofsim.units import parse_bytes, parse_tokens
from roofsim.validate import _plans, check_config, load_configs
from roofsim.workload import Workload

# per run outside its prefill and decode: build, warm-up, untimed forward, capture, exit
RUN_OVERHEAD_S = 10.0


def config_runs(cfg, gpu, host) -> list[tuple[str, str, float, float, bool]]:
    """(tag, family, prefill s, decode s per token, fits) for each plan validate would run for `cfg`."""
    model = load_model(cfg.model)
    work = Workload(context=parse_tokens(cfg.context), batch=cfg.batch, gen=cfg.gen)
    lim = Limits(gpu_mem_bytes=parse_bytes(cfg.gpu_mem, "gpu_mem") if cfg.gpu_mem else None)
    plans, _ = _plans(cfg, model, gpu, host, work, lim)
    out = []
    for tag, plan in plans:
        t = predict(plan, model, gpu, host, work, lim)
        out.append(
            (tag, plan.family, t.summary.prefill.time_s, t.summary.decode.time_s, bool(t.summary.feasible))
        )
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("configs")
    ap.add_argument("--gpu", required=True)
    args = ap.parse_args(argv)
    try:
        gpu = load_gpu(args.gpu)
        host = default_host_of(args.gpu, gpu)
        configs = load_configs(args.configs)
        for cfg in configs:
            check_config(cfg, args.configs, gpu)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    total = 0.0
    for cfg in configs:
        runs = config_runs(cfg, gpu, host)
        secs = sum(p + d * cfg.gen + RUN_OVERHEAD_S for _, _, p, d, fits in runs if fits)
        total += secs
        what = ", ".join(
            f"{tag} {fam} {p:.1f} s + {1e3 * d:.1f} ms/token{'' if fits else ' (does not fit: not run)'}"
            for tag, fam, p, d, fits in runs
        )
        print(f"{cfg.name:28s} {secs:6.0f} s  {what}")
    print(f"total {total:.0f} s ({total / 60:.1f} min) over {len(configs)} configurations")
    return 0


if __name__ == "__main__":
    sys.exit(main())
