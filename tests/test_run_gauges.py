"""validation/run_gauges.py reads the committed runs: the host gauge and CPU gather figures the held-out and fp8
folders' READMEs quote are what it computes from them."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).parent.parent


def _tool():
    spec = importlib.util.spec_from_file_location("run_gauges", ROOT / "validation" / "run_gauges.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_quoted_gauges_and_gathers_are_what_the_tool_reads():
    tool = _tool()
    held = ROOT / "validation" / "results" / "h100-heldout4"
    rows = {r["run"]: r for r in tool.run_rows(held)}
    assert len(rows) == 18  # 9 fixed plans, and two planner configurations of 4 and 5 runs
    sparse = rows["campaign/m7-sparse-f25-144k"]
    assert round(sparse["gather_gbps"], 1) == 60.8 and sparse["family"] == "sparse_fetch"
    assert round(rows["campaign/l2-evict-b4k-80k"]["gauge_us"]) == 626
    assert rows["campaign/l2-evict-b4k-80k"]["gather_gbps"] is None  # no CPU gather in an evict plan
    assert round(rows["campaign/q3-32b-head-g2-r2-40k-76gb"]["decode_err_pct"], 1) == -24.5
    m = tool.monitor([held / "host-a.csv"])
    assert round(m["median"]) == 1181 and m["p10"] <= m["median"] <= m["p90"] <= m["max"]
