import json
import math
from pathlib import Path

import pytest
from pydantic import BaseModel

from roofsim import link
from roofsim.errors import UserError
from roofsim.specs import list_gpus, list_hosts, list_models, load_gpu, load_host, load_model
from roofsim.specs.model import BUILTIN
from roofsim.specs.sourced import USER_PROVIDED, Sourced
from roofsim.specs.tomlfile import read_toml

PROBE = Path(__file__).parent.parent / "validation/results/h100/h100-probe.json"

ISSUE_GPUS = {
    "rtx3090", "rtx4090", "rtx5090", "rtx-a6000", "l4", "l40s", "a100-40gb-pcie", "a100-80gb-sxm",
    "h100-pcie", "h100-sxm", "h200", "gh200", "b200", "mi300x",
}  # fmt: skip
ISSUE_HOSTS = {"desktop-ddr5", "epyc-rome-milan", "sapphire-rapids", "genoa", "grace"}


def _numbers(model):
    for name, value in model:
        if isinstance(value, Sourced):
            yield name, value
        elif isinstance(value, BaseModel):
            yield from _numbers(value)


def test_every_gpu_and_host_of_the_issue_ships():
    assert ISSUE_GPUS <= set(list_gpus())
    assert ISSUE_HOSTS <= set(list_hosts())


@pytest.mark.parametrize("name", sorted(ISSUE_GPUS))
def test_gpu_numbers_have_provenance_and_default_host_exists(name):
    gpu = load_gpu(name)
    numbers = dict(_numbers(gpu))
    assert len(numbers) >= 20
    for field, s in numbers.items():
        assert s.provenance and s.source != USER_PROVIDED, f"{name}.{field} has no provenance"
    assert gpu.default_host in list_hosts()
    assert 0 < gpu.link.duplex_efficiency.value <= 1


@pytest.mark.parametrize("name", sorted(ISSUE_HOSTS))
def test_host_numbers_have_provenance(name):
    for field, s in _numbers(load_host(name)):
        assert s.provenance and s.source != USER_PROVIDED, f"{name}.{field} has no provenance"


def test_geforce_half_rate_fp32_accumulate():
    assert load_gpu("rtx4090").compute.bf16_tflops.value == pytest.approx(165.2)
    assert load_gpu("rtx3090").compute.bf16_tflops.value == pytest.approx(71, rel=0.01)


def test_link_model_reproduces_h100_probe_curve_within_10pct():
    """Isolated pinned H2D copies on the H100: 6.4 GB/s at 64 KB, 23 at 256 KB, 42 at 1 MB, 51 at 4 MB, 55 >= 16 MB."""
    probe = json.loads(PROBE.read_text())["pcie_pinned"]
    gpu = load_gpu("h100-sxm")
    for size in (65536, 262144, 1048576, 4194304, 16777216, 268435456, 1073741824):
        measured = probe[str(size)]["h2d_GBps"] * 1e9
        modelled = size / float(link.isolated_copy_s(size, gpu, "h2d"))
        assert modelled == pytest.approx(measured, rel=0.10), size


def test_pageable_copies_are_a_separate_slower_rate():
    gpu = load_gpu("h100-sxm")
    assert link.rate(gpu, "h2d", pinned=False) == pytest.approx(9.06e9)
    assert link.rate(gpu, "h2d", pinned=False) < link.rate(gpu, "h2d") / 5


def test_duplex_slows_only_the_overlap():
    a, b = link.duplex(1.0, 0.0, 0.85)
    assert (a, b) == (1.0, 0.0)
    a, b = link.duplex(1.0, 1.0, 0.5)
    assert a == pytest.approx(2.0) and b == pytest.approx(2.0)


def test_unknown_gpu_suggests_close_names():
    with pytest.raises(UserError, match="did you mean.*rtx4090"):
        load_gpu("rtx4900")


def _toml_value(v):
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + " }"
    return json.dumps(v)


def _write_spec(tmp_path, mutate, name="mygpu.toml"):
    data = read_toml(Path(__file__).parent.parent / "hw_specs/gpus/h100-sxm.toml")
    mutate(data)
    lines = [f"{k} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for section, table in data.items():
        if isinstance(table, dict):
            lines += [f"[{section}]"] + [f"{k} = {_toml_value(v)}" for k, v in table.items()]
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def test_user_spec_file_loads_and_bad_one_names_the_field(tmp_path):
    ok = _write_spec(tmp_path, lambda d: d.update(name="mygpu"))
    assert load_gpu(str(ok)).name == "mygpu"

    def drop(d):
        del d["link"]["h2d_gbps"]

    with pytest.raises(UserError, match=r"field 'link.h2d_gbps' is missing"):
        load_gpu(str(_write_spec(tmp_path, drop, "missing.toml")))

    def negative(d):
        d["memory"]["bandwidth_gbps"]["value"] = -5

    with pytest.raises(UserError, match=r"memory.bandwidth_gbps.*negative"):
        load_gpu(str(_write_spec(tmp_path, negative, "negative.toml")))


def test_user_file_accepts_bare_numbers(tmp_path):
    path = tmp_path / "host.toml"
    path.write_text(
        'name = "box"\nfull_name = "my box"\nram_capacity_gib = 256\nram_bandwidth_gbps = 100\nram_efficiency = 0.7\n'
        "cpu_cores = 16\ncpu_tflops = 1.5\ncpu_attention_gbps = 30\n"
    )
    host = load_host(str(path))
    assert host.ram_capacity_gib.source == USER_PROVIDED
    assert host.capacity_bytes == 256 * 2**30


def test_builtin_models_have_sources_and_known_sizes():
    assert {"llama-3-8b", "llama-2-7b", "qwen2.5-72b", "opt-30b", "phi-3-mini-128k"} <= set(list_models())
    sizes = {
        "llama-3-8b": 8.03,
        "llama-3.1-70b": 70.55,
        "llama-2-7b": 6.74,
        "qwen2.5-7b": 7.62,
        "opt-6.7b": 6.66,
        "opt-13b": 12.85,
        "phi-3-mini-128k": 3.82,
    }
    for name, billions in sizes.items():
        m = load_model(name)
        assert m.source.startswith("https://huggingface.co/")
        assert m.params / 1e9 == pytest.approx(billions, rel=0.01), name


def _hf_config(m):
    if m.family == "opt":
        return {
            "model_type": "opt", "hidden_size": m.hidden, "num_attention_heads": m.n_heads,
            "num_hidden_layers": m.n_layers, "ffn_dim": m.intermediate, "vocab_size": m.vocab,
            "max_position_embeddings": m.max_positions, "tie_word_embeddings": True,
        }  # fmt: skip
    return {
        "model_type": m.family, "hidden_size": m.hidden, "num_attention_heads": m.n_heads,
        "num_key_value_heads": m.n_kv_heads, "num_hidden_layers": m.n_layers, "intermediate_size": m.intermediate,
        "vocab_size": m.vocab, "max_position_embeddings": m.max_positions,
        "tie_word_embeddings": m.tied_embeddings, "head_dim": m.head_dim,
    }  # fmt: skip


@pytest.mark.parametrize(
    "name", ["llama-3-8b", "qwen2.5-7b", "opt-6.7b", "phi-3-mini-128k", "mistral-7b-v0.3"]
)
def test_hf_config_reads_back_the_builtin_shapes(name, tmp_path):
    m = BUILTIN[name]
    path = tmp_path / name / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps(_hf_config(m)))
    read = load_model(str(path.parent))
    assert read.model_dump(exclude={"name", "source"}) == m.model_dump(exclude={"name", "source"})


def test_unsupported_or_broken_config_is_a_user_error(tmp_path):
    bad = tmp_path / "config.json"
    bad.write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(UserError, match="not supported"):
        load_model(str(bad))
    bad.write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    with pytest.raises(UserError, match="missing"):
        load_model(str(bad))
    with pytest.raises(UserError, match="did you mean"):
        load_model("llama-3-8")


def test_kv_bytes_per_token_llama3_8b():
    assert load_model("llama-3-8b").kv_bytes_per_token == 128 * 1024
    assert math.isclose(load_model("llama-2-7b").kv_bytes_per_token, 512 * 1024)
