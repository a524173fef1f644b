"""Print the validation table from committed results, and as its last line
`n=<runs> decode_median_abs_err_pct=<> decode_p90_abs_err_pct=<> prefill_median_abs_err_pct=<>
prefill_p90_abs_err_pct=<> mem_err_max_pct=<> regret_max_pct=<> band_coverage_pct=<>`.

    python validation/summarize.py validation/results/h100/campaign

Every figure of the last line is the prediction made in advance, from the calibrated profile alone: errors are
(simulated prediction - measured) / measured, decode time per token and prefill time apart, over every
configuration's chosen plan (n counts them); peak GPU memory separately; regret = measured decode time of the
planner's pick over the best measured among its runners-up and the best plan of every other exact family that
fits (configurations with plan = "planner"); band_coverage_pct = the share of measured times (decode and
prefill of every complete run: picks, runners-up, family bests) that lie within the prediction's band. The
re-pricing at each run's own host pace is printed above it as a diagnostic (docs/validation.md).
"""

from __future__ import annotations

import sys

from roofsim.validate import band_line, format_table, prefill_after_first_chunk_line, run_pace_line, summarize


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python validation/summarize.py RESULTS_DIR", file=sys.stderr)
        return 2
    rows, line = summarize(argv[0])
    print(format_table(rows))
    print(prefill_after_first_chunk_line(rows))
    for extra in (run_pace_line(rows), band_line(argv[0])):
        if extra is not None:
            print(extra)
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
