"""A family lives in one module per side and the registry: a toy family registered here (a plan type, its
candidates, analytic model, simulator program and executor builder, written below and nowhere else) is seen by
plan parsing, predict, the predict sweep, the planner, the simulator, traces and the CPU executor."""

import json
from collections.abc import Iterator
from typing import Literal

import pytest

from roofsim.cli import main
from roofsim.families import ResidentPlan, slot_stream
from roofsim.families.registry import Family, families, register, unregister
from roofsim.geometry import check_divides
from roofsim.limits import Limits
from roofsim.plan import PlanBase, plan_from_dict
from roofsim.planner import SearchSpace, search
from roofsim.predict import predict
from roofsim.sim import simulate
from roofsim.space import chunks
from roofsim.specs import load_gpu, load_model
from roofsim.specs.hardware import default_host_of
from roofsim.sweep import best_per_family
from roofsim.trace import Trace
from roofsim.workload import Workload


class ToyPlan(PlanBase):
    """Every KV head resident on the GPU, in slots of heads_per_slot heads attended one by one."""

    family: Literal["toy"] = "toy"
    heads_per_slot: int = 1


def _knobs(plan: ToyPlan, ctx) -> slot_stream.SlotKnobs:
    m = ctx.model
    check_divides(m.n_kv_heads, plan.heads_per_slot, "heads_per_slot")
    slots = m.n_kv_heads // plan.heads_per_slot
    return slot_stream.SlotKnobs(
        group=plan.heads_per_slot,
        resident=(slots,) * m.n_layers,
        chunk=plan.prefill_chunk,
        streamed_weights=plan.weights == "streamed",
    )


def _candidates(model, work, space) -> Iterator[ToyPlan]:
    for c in chunks(work):
        yield ToyPlan(heads_per_slot=2, prefill_chunk=c)


TOY = Family(
    plan_type=ToyPlan,
    candidates=_candidates,
    evaluate=lambda plan, ctx: slot_stream.evaluate(_knobs(plan, ctx), ctx),
    program=lambda b, plan, steps, base: slot_stream.program(b, _knobs(plan, b.ctx), steps, base),
    host_memory=lambda plan, ctx: {},
    host_store=False,
)

H100 = load_gpu("h100-sxm")
HOST = default_host_of("h100-sxm", H100)
LLAMA = load_model("llama-3-8b")
WORK = Workload(context=16384, gen=4)


@pytest.fixture
def toy():
    register(TOY)
    try:
        yield TOY
    finally:
        unregister("toy")


def test_the_model_side_sees_a_registered_family(toy):
    assert "toy" in families()
    plan = plan_from_dict({"family": "toy", "heads_per_slot": 4})
    assert isinstance(plan, ToyPlan)
    p = predict(plan, LLAMA, H100, HOST, WORK)
    r = predict(ResidentPlan(), LLAMA, H100, HOST, WORK)
    # all KV resident either way: the same memory, no bytes on the link, more attention calls per layer
    assert p.summary.peak_gpu_bytes == pytest.approx(r.summary.peak_gpu_bytes)
    assert p.summary.decode.h2d_bytes == 0
    assert p.summary.decode_s_per_token >= r.summary.decode_s_per_token
    sim = simulate(plan, LLAMA, H100, HOST, WORK, keep="all")
    assert sim.summary.feasible and sim.summary.decode_s_per_token > 0
    assert {s.slot for s in sim.spans if s.kind == "attention"} == {0, 1}
    again = Trace.model_validate_json(sim.model_dump_json())
    assert again.header.plan == plan


def test_the_sweep_and_the_planner_screen_a_registered_family(toy):
    (best,) = best_per_family(LLAMA, H100, HOST, WORK, Limits(), families=["toy"])
    assert best.plan.family == "toy" and best.plan.heads_per_slot == 2
    result = search(LLAMA, H100, HOST, WORK, Limits(), SearchSpace(families=("toy",)), refine_top=2)
    assert {c.plan.family for c in result.ranked} == {"toy"}


def test_the_cli_takes_a_registered_family_by_name(toy, capsys):
    code = main(["predict", "--gpu", "h100-sxm", "--context", "16K", "--plan", "toy", "--json"])
    assert code == 0
    (doc,) = json.loads(capsys.readouterr().out)["predictions"]
    assert doc["header"]["plan"]["family"] == "toy"


def test_an_unregistered_family_is_a_one_line_error(capsys):
    assert main(["predict", "--gpu", "h100-sxm", "--context", "16K", "--plan", "toy"]) == 2
    err = capsys.readouterr().err
    assert "unknown plan family 'toy'" in err and err.count("\n") == 1


def test_the_cpu_executor_runs_a_registered_family(toy):
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from roofsim.executor.build import make_cache
    from roofsim.executor.check import greedy_logits, reference_logits, rel_err, tiny_config
    from roofsim.executor.families import register_builder, unregister_builder
    from roofsim.executor.models import random_model
    from roofsim.executor.slots import SlotLayer, cut_slots

    def build(rt, plan, model, **_):
        sh = rt.shape
        g = plan.heads_per_slot
        return [SlotLayer(rt, i, cut_slots(sh.n_kv_heads, g, sh.n_kv_heads // g)) for i in range(sh.n_layers)]

    register_builder("toy")(build)
    try:
        model = random_model(tiny_config("llama"), "cpu", torch.float32, seed=1)
        ids = torch.randint(0, 128, (1, 21), generator=torch.Generator().manual_seed(2))
        cache = make_cache(model, ToyPlan(heads_per_slot=1))
        try:
            assert len(cache.layers[0].slots) == 2
            got = greedy_logits(model, cache, ids, 8, 3)
        finally:
            cache.close()
        assert rel_err(got, reference_logits(model, ids, 8, 3)) < 1e-5
    finally:
        unregister_builder("toy")


def test_a_stored_plan_without_decode_graphs_reads_as_it_ran():
    """A stored resident or evict plan that does not say decode_graphs was written before the knob (or its true
    default) existed and decoded eager; a plan of a family without the knob, and one that says it, stay as they
    are (roofsim.trace.eager_if_unsaid, applied by upgrade and to results folders' plan.json)."""
    from roofsim.trace import SCHEMA_VERSION, eager_if_unsaid, upgrade

    for family in ("resident", "evict"):
        assert eager_if_unsaid({"family": family}) == {"family": family, "decode_graphs": False}
        said = {"family": family, "decode_graphs": True}
        assert eager_if_unsaid(said) == said
    assert eager_if_unsaid({"family": "head_offload"}) == {"family": "head_offload"}
    assert eager_if_unsaid("not a plan") == "not a plan"
    old = {"header": {"schema_version": SCHEMA_VERSION - 1, "plan": {"family": "evict", "budget_tokens": 8}}}
    assert upgrade(old)["header"]["plan"]["decode_graphs"] is False
    now = {"header": {"schema_version": SCHEMA_VERSION, "plan": {"family": "evict"}}}
    assert upgrade(now) is now
