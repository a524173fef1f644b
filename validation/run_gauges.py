"""What the host did during each measured run of a results folder: per run (picks, runners-up and family bests
alike), its family, the decode error as predicted in advance, the median of the loop gauge timed before each decode
step (`summary.host_pace_us`, us: the host's level during that run) and, where the plan gathers on the CPU
(sparse_fetch), the median rate of its decode gathers (bytes read plus written, GB/s). With --monitor, the host
monitor's loop (validation/host_monitor.py CSVs) as p10 / median / p90 / max. Reads committed files only.

    python validation/run_gauges.py validation/results/h100-heldout4 --monitor validation/results/h100-heldout4/host-*.csv
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import statistics
from pathlib import Path


def _load(path: Path) -> dict:
    if not path.exists():
        path = path.with_name(path.name + ".gz")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        return json.load(f)


def run_rows(root: Path) -> list[dict]:
    """One row per run folder under root (a folder with comparison.json and a measured trace)."""
    rows = []
    for comparison in sorted(root.rglob("comparison.json")):
        run = comparison.parent
        measured = _load(run / "measured.json")
        phases = {p["name"]: p for p in json.loads(comparison.read_text())["phases"]}
        decode = phases["decode_s_per_token"]
        gathers = [
            s["bytes"] / (s["end_s"] - s["start_s"]) / 1e9
            for s in measured["spans"]
            if s["kind"] == "cpu_gather" and s["phase"] == "decode" and s["end_s"] > s["start_s"]
        ]
        pace = measured["summary"].get("host_pace_us") or []
        rows.append(
            {
                "run": str(run.relative_to(root)),
                "family": measured["header"]["plan"]["family"],
                "decode_err_pct": (decode["predicted"] / decode["measured"] - 1) * 100,
                "gauge_us": statistics.median(pace) if pace else None,
                "gather_gbps": statistics.median(gathers) if gathers else None,
            }
        )
    return rows


def monitor(paths: list[Path]) -> dict:
    """The host monitor's 20000-iteration loop over every sample of the CSVs: p10, median, p90, max (us)."""
    v = sorted(float(r["python_loop_us_20000"]) for p in paths for r in csv.DictReader(p.open()))
    return {
        "n": len(v),
        "p10": v[len(v) // 10],
        "median": v[len(v) // 2],
        "p90": v[9 * len(v) // 10],
        "max": v[-1],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results", type=Path)
    ap.add_argument("--monitor", type=Path, nargs="*", default=[])
    args = ap.parse_args()
    for r in run_rows(args.results):
        gauge = f"{r['gauge_us']:7.0f} us" if r["gauge_us"] is not None else "      - us"
        gather = f"  gather {r['gather_gbps']:.1f} GB/s" if r["gather_gbps"] is not None else ""
        print(f"{r['run']:45s} {r['family']:14s} decode {r['decode_err_pct']:+6.1f}%  gauge {gauge}{gather}")
    if args.monitor:
        m = monitor(args.monitor)
        print(
            f"monitor loop: n={m['n']} p10={m['p10']:.0f} median={m['median']:.0f} p90={m['p90']:.0f} "
            f"max={m['max']:.0f} us"
        )


if __name__ == "__main__":
    main()
