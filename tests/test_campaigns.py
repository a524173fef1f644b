"""The committed campaign files: each loads and every configuration passes the checks `roofsim validate` makes
before its first run, and the held-out script's parts run each held-out set's configurations exactly once."""

import re
from pathlib import Path

import pytest

from roofsim.specs import load_gpu
from roofsim.validate import check_config, load_configs

ROOT = Path(__file__).parent.parent
CAMPAIGNS = sorted((ROOT / "validation").glob("campaign-*.toml"))
SCRIPT = (ROOT / "validation" / "heldout_h100.sh").read_text()


@pytest.mark.parametrize("path", CAMPAIGNS, ids=lambda p: p.name)
def test_every_campaign_configuration_passes_validates_checks(path):
    gpu = load_gpu("h100-sxm")
    configs = load_configs(str(path))
    assert configs
    for cfg in configs:
        check_config(cfg, str(path), gpu)


@pytest.mark.parametrize(
    "n,toml",
    [
        ("1", "campaign-heldout.toml"),
        ("2", "campaign-heldout2.toml"),
        ("3", "campaign-heldout3.toml"),
        ("4", "campaign-heldout4.toml"),
        ("5", "campaign-heldout5.toml"),
    ],
)
def test_the_held_out_parts_cover_each_set_once(n, toml):
    parts = re.findall(rf'^\s*{n}:[a-z]\) echo "([^"]+)"', SCRIPT, flags=re.M)
    named = [name for part in parts for name in part.split(",")]
    configs = [c.name for c in load_configs(str(ROOT / "validation" / toml))]
    assert sorted(named) == sorted(configs)
    assert len(configs) >= 10


def _names(toml: str) -> set[str]:
    return {c.name for c in load_configs(str(ROOT / "validation" / toml))}


def test_the_second_held_out_set_shares_no_configuration_with_the_others():
    names = _names("campaign-heldout2.toml")
    for other in ("campaign-h100.toml", "campaign-heldout.toml", "campaign-archs.toml"):
        assert not names & _names(other), other


@pytest.mark.parametrize(
    "toml", ["campaign-heldout3.toml", "campaign-heldout4.toml", "campaign-heldout5.toml"]
)
def test_the_later_held_out_sets_share_no_configuration_with_any_other_campaign(toml):
    names = _names(toml)
    for other in CAMPAIGNS:
        if other.name != toml:
            assert not names & _names(other.name), other.name


def _campaign_cost():
    import importlib.util

    spec = importlib.util.spec_from_file_location("campaign_cost", ROOT / "validation" / "campaign_cost.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_campaign_cost_prices_each_run_validate_would_make(tmp_path, capsys):
    """Each configuration's runs (the given plan; the planner's pick and the best of each family asked for),
    each its predicted prefill, decode per token x gen and a fixed cost per run; the total is their sum. A bad
    file is one line and exit 2."""
    cost = _campaign_cost()
    toml = tmp_path / "c.toml"
    toml.write_text(
        """
[[config]]
name = "given"
model = "llama-3-8b"
context = "16K"
plan = { family = "resident", prefill_chunk = 4096 }
gen = 8

[[config]]
name = "planned"
model = "llama-3-8b"
context = "64K"
plan = "planner"
gen = 8
gpu_mem = "24GB"
runners_up = 0
other_families = ["layer_offload"]
"""
    )
    assert cost.main([str(toml), "--gpu", "h100-sxm"]) == 0
    lines = capsys.readouterr().out.splitlines()
    given, planned, total = lines
    assert given.startswith("given") and "pick resident" in given
    assert "pick " in planned and "best-layer_offload layer_offload" in planned
    seconds = [float(line.split()[1]) for line in (given, planned)]
    assert all(s > cost.RUN_OVERHEAD_S for s in seconds)
    assert float(total.split()[1]) == pytest.approx(sum(seconds), abs=1.0)
    toml.write_text('[[config]]\nname = "x"\nmodel = "no-such-model"\ncontext = "1K"\nplan = "resident"\n')
    assert cost.main([str(toml), "--gpu", "h100-sxm"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err
