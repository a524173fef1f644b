"""Tensor parallelism on the CPU (gloo, 2 ranks): each rank holds its heads' share of a tiny model and streams only
its own KV; the ranks' logits equal the single-process ones; `roofsim run --tp 2` launches torchrun and writes
rank 0's trace."""

import json
import os
import socket
from datetime import timedelta

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import torch.multiprocessing as mp  # noqa: E402
from roofsim.executor.build import make_cache  # noqa: E402
from roofsim.executor.check import greedy_logits, reference_logits, rel_err, tiny_config  # noqa: E402
from roofsim.executor.models import random_model  # noqa: E402
from roofsim.executor.shard import reduce_outputs, shard_  # noqa: E402

from roofsim.cli import main  # noqa: E402
from roofsim.families import HeadOffloadPlan, KvprPlan, LayerOffloadPlan, ResidentPlan  # noqa: E402
from roofsim.trace import Trace  # noqa: E402

PROMPT, CHUNK, GEN = 21, 8, 3
PLANS = {
    "resident": ResidentPlan(tp=2),
    "head_offload": HeadOffloadPlan(tp=2),
    "layer_offload": LayerOffloadPlan(write_back="incremental", tp=2),
    "kvpr": KvprPlan(recompute_tokens=10, tp=2),
    "head_offload_streamed_weights": HeadOffloadPlan(weights="streamed", tp=2),
}
# separate q/k/v and gate/up; the same with biases on every projection (o_proj's and down_proj's added once);
# Phi-3's fused qkv_proj and gate_up_proj
FAMILIES = ("llama", "llama_biased", "phi3")


def _config(fam: str):
    if fam != "llama_biased":
        return tiny_config(fam)
    cfg = tiny_config("llama")
    cfg.attention_bias = cfg.mlp_bias = True
    return cfg


def _model(fam: str):
    model = random_model(_config(fam), "cpu", torch.float32, seed=1)
    if fam == "llama_biased":  # biases drawn as zeros: draw them, from the same seed on every rank
        g = torch.Generator().manual_seed(5)
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.data.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def _ids():
    return torch.randint(0, 128, (1, PROMPT), generator=torch.Generator().manual_seed(2))


def _rank(rank: int, tp: int, port: int, out: str) -> None:
    """One rank: its share of each tiny model, every plan's logits and the cache's KV heads and H2D bytes."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    # a rank that fails leaves the other in a collective: it gives up after a minute instead of hanging the suite
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=tp, timeout=timedelta(seconds=60)
    )
    try:
        got = {}
        for fam in FAMILIES:
            model = _model(fam)
            shard_(model, rank, tp)
            reduce_outputs(model)
            for name, plan in PLANS.items():
                cache = make_cache(model, plan, max_tokens=PROMPT + GEN)
                logits = greedy_logits(model, cache, _ids(), CHUNK, GEN)
                cache.runtime.engine.synchronize()
                got[fam, name] = (
                    logits,
                    cache.runtime.shape.n_kv_heads,
                    cache.runtime.engine.stats["h2d"].bytes,
                )
                cache.close()
        torch.save(got, f"{out}.{rank}")
    finally:
        dist.barrier()
        dist.destroy_process_group()
    os._exit(0)  # past the interpreter's teardown, as executor/launch.py's ranks


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("tp") / "logits")
    mp.spawn(_rank, args=(2, _free_port(), out), nprocs=2, join=True)
    return [torch.load(f"{out}.{r}") for r in range(2)]


@pytest.mark.parametrize("fam", FAMILIES)
@pytest.mark.parametrize("name", list(PLANS))
def test_tp2_ranks_give_the_single_process_logits(ranks, fam, name):
    model = _model(fam)
    ref = reference_logits(model, _ids(), CHUNK, GEN)
    for rank in ranks:
        logits, kv_heads, _ = rank[fam, name]
        assert kv_heads == 1  # 2 KV heads, split 2 ways
        assert rel_err(logits, ref) < 1e-5, (fam, name)


@pytest.mark.parametrize("name", ["head_offload", "layer_offload"])
def test_each_rank_streams_only_its_own_heads(ranks, name):
    """A streamed plan's H2D bytes on one rank are the single process's divided by tp (the KV heads split)."""
    model = random_model(tiny_config("llama"), "cpu", torch.float32, seed=1)
    cache = make_cache(model, PLANS[name].model_copy(update={"tp": 1}), max_tokens=PROMPT + GEN)
    greedy_logits(model, cache, _ids(), CHUNK, GEN)
    cache.runtime.engine.synchronize()
    whole = cache.runtime.engine.stats["h2d"].bytes
    cache.close()
    assert whole > 0
    assert [r["llama", name][2] for r in ranks] == [whole // 2, whole // 2]


def test_shard_keeps_each_ranks_heads_and_mlp_rows():
    whole = random_model(tiny_config("llama"), "cpu", torch.float32, seed=1)
    part = random_model(tiny_config("llama"), "cpu", torch.float32, seed=1)
    shard_(part, 1, 2)
    a, b = whole.model.layers[0], part.model.layers[0]
    D = 16
    assert torch.equal(b.self_attn.q_proj.weight, a.self_attn.q_proj.weight[2 * D :])  # query heads 2, 3
    assert torch.equal(b.self_attn.k_proj.weight, a.self_attn.k_proj.weight[D:])  # KV head 1
    assert torch.equal(b.self_attn.o_proj.weight, a.self_attn.o_proj.weight[:, 2 * D :])
    assert torch.equal(b.mlp.down_proj.weight, a.mlp.down_proj.weight[:, 64:])
    assert torch.equal(b.mlp.up_proj.weight, a.mlp.up_proj.weight[64:])
    assert torch.equal(part.model.embed_tokens.weight, whole.model.embed_tokens.weight)
    assert torch.equal(b.input_layernorm.weight, a.input_layernorm.weight)
    cfg = part.config
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.intermediate_size, cfg.head_dim) == (
        2,
        1,
        64,
        16,
    )


def test_roofsim_run_tp2_launches_ranks_and_writes_rank0s_trace(tmp_path, config_path, capsys):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"plan": {"family": "head_offload", "prefill_chunk": 16, "tp": 2}}))
    out = tmp_path / "measured.json"
    args = ["run", str(plan), "--model", str(config_path), "--prompt-len", "40", "--gen", "4"]
    assert main([*args, "-o", str(out), "--device", "cpu", "--dtype", "fp32"]) == 0
    t = Trace.read(out)
    assert t.complete and t.header.plan.tp == 2 and t.header.plan.family == "head_offload"
    assert any("tensor parallel: 2 ranks" in n for n in t.header.notes)
    assert any(n.startswith("decode step time (ms) per rank") for n in t.header.notes)
    assert len(t.summary.prefill.step_s) == 3 and len(t.summary.decode.step_s) == 3
    # rank 0 streams its one KV head of 2: (40 + step) tokens x K and V x 1 head x 16 dims x 4 bytes per layer
    h2d = [sp for sp in t.spans if sp.phase == "decode" and sp.kind == "h2d"]
    assert h2d and all(sp.bytes == (40 + sp.step) * 2 * 1 * 16 * 4 for sp in h2d)


def test_tp_errors_are_one_line(tmp_path, config_path, capsys, monkeypatch):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"plan": {"family": "resident", "tp": 2}}))
    out = str(tmp_path / "m.json")
    base = ["run", str(plan), "--model", str(config_path), "-o", out, "--device", "cpu"]
    assert main([*base, "--tp", "4"]) == 2
    err = capsys.readouterr().err
    assert "--tp 4 conflicts with" in err and "tp 2" in err and len(err.strip().splitlines()) == 1
    assert (
        main(["run", "resident", "--model", str(config_path), "-o", out, "--device", "cpu", "--tp", "4"]) == 2
    )
    assert "do not split 4 ways" in capsys.readouterr().err  # 2 KV heads
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert (
        main(["run", "resident", "--model", str(config_path), "-o", out, "--device", "cuda", "--tp", "2"])
        == 2
    )
    assert "--tp 2 needs 2 GPUs on this host; 1 visible" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")
def test_roofsim_run_tp2_on_two_gpus_streams_half_the_kv_per_rank(tmp_path, config_path):
    """NCCL between cuda:0 and cuda:1: rank 0's decode copies carry its one KV head of two."""
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"plan": {"family": "head_offload", "prefill_chunk": 16, "tp": 2}}))
    out = tmp_path / "measured.json"
    args = [
        "run",
        str(plan),
        "--model",
        str(config_path),
        "--prompt-len",
        "40",
        "--gen",
        "4",
        "--device",
        "cuda",
    ]
    assert main([*args, "-o", str(out), "--dtype", "fp32"]) == 0
    t = Trace.read(out)
    assert t.complete and t.header.plan.tp == 2 and "cpu" not in t.header.gpu
    h2d = [sp for sp in t.spans if sp.phase == "decode" and sp.kind == "h2d"]
    assert h2d and all(sp.bytes == (40 + sp.step) * 2 * 1 * 16 * 4 for sp in h2d)
    assert t.summary.decode_s_per_token > 0
