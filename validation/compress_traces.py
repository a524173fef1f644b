"""gzip the measured and predicted traces of a results folder in place (measured.json -> measured.json.gz), so
that committed campaigns stay small: the device machine takes at most 64 MiB of working tree per call, and a
campaign's traces are ~50 MB as plain JSON. Everything that reads them (summarize, --repredict, report) takes
either form.

    python validation/compress_traces.py validation/results/h100/campaign
"""

from __future__ import annotations

import sys

from roofsim.validate import compress_traces


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python validation/compress_traces.py RESULTS_DIR", file=sys.stderr)
        return 2
    print(f"compressed {compress_traces(argv[0])} traces")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
