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


@pytest.mark.parametrize("n,toml", [("1", "campaign-heldout.toml"), ("2", "campaign-heldout2.toml")])
def test_the_held_out_parts_cover_each_set_once(n, toml):
    parts = re.findall(rf'^\s*{n}:[a-z]\) echo "([^"]+)"', SCRIPT, flags=re.M)
    named = [name for part in parts for name in part.split(",")]
    configs = [c.name for c in load_configs(str(ROOT / "validation" / toml))]
    assert sorted(named) == sorted(configs)
    assert len(configs) >= 10


def test_the_second_held_out_set_shares_no_configuration_with_the_others():
    names = {c.name for c in load_configs(str(ROOT / "validation" / "campaign-heldout2.toml"))}
    for other in ("campaign-h100.toml", "campaign-heldout.toml", "campaign-archs.toml"):
        assert not names & {c.name for c in load_configs(str(ROOT / "validation" / other))}, other
