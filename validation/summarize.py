"""Print the validation table from committed results, and as its last line
`n=<configs> median_abs_err_pct=<x> p90_abs_err_pct=<y> mem_err_max_pct=<z> regret_max_pct=<w>`.

    python validation/summarize.py validation/results/h100

Errors are (simulated prediction - measured) / measured for prefill time and decode time per token, over every
configuration's chosen plan; peak GPU memory separately; regret = measured decode time of the planner's pick over
the best measured among the plans it ranked (configurations with plan = "planner").
"""

from __future__ import annotations

import sys

from roofsim.validate import as_calibrated_line, format_table, prefill_after_first_chunk_line, summarize


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python validation/summarize.py RESULTS_DIR", file=sys.stderr)
        return 2
    rows, line = summarize(argv[0])
    print(format_table(rows))
    print(prefill_after_first_chunk_line(rows))
    if (calibrated := as_calibrated_line(argv[0])) is not None:
        print(calibrated)
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
