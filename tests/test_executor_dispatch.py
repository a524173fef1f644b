"""The host side of roofsim's cost model counts what the executor dispatches: eager decode is launch-bound, so the
host units the model charges per attention call (ops.ATTN_CALL_KERNELS, + STREAMED_CALL_EXTRA for a streamed
unit) must stay in proportion to the aten ops the executor actually dispatches for one, relative to a whole layer.
Counted on the CPU with a dispatch mode (a count, not a timing): a refactor of the executor that adds or removes
work per slot shows up here."""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from roofsim import ops  # noqa: E402
from roofsim.families import HeadOffloadPlan, ResidentPlan  # noqa: E402
from roofsim.specs.model import ModelSpec  # noqa: E402


class _Count(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += 1
        return func(*args, **(kwargs or {}))


def _per_layer(plan, count, record: bool = False) -> float:
    """What one decoder layer adds to a decode step, as `count(step)` counts it (6-layer minus 2-layer model,
    over 4), through the same tiny-model decoding that calibration times."""
    from roofsim.executor.calibrate.host import tiny_decoding

    counts = []
    for layers in (6, 2):
        config = dict(layers=layers, kv_heads=4, heads=8)
        with tiny_decoding(plan, "cpu", torch.float32, 1, record=record, **config) as (step, _):
            counts.append(count(step))
    return (counts[0] - counts[1]) / 4


def _aten_ops(step) -> int:
    c = _Count()
    with c:
        step()
    return c.n


def _ops_per_layer(plan) -> float:
    """aten ops one decoder layer dispatches in a decode step."""
    return _per_layer(plan, _aten_ops)


def test_model_host_units_follow_the_executors_dispatches():
    tiny = ModelSpec(
        name="tiny", source="test", family="llama", n_layers=1, hidden=128, n_heads=8, n_kv_heads=4, head_dim=16,
        intermediate=128, vocab=128, max_positions=4096,
    )  # fmt: skip
    units_per_layer = sum(op.kernels for op in ops.layer_ops(tiny, 1, 16, 1))
    resident = _ops_per_layer(ResidentPlan())
    per_unit = resident / units_per_layer  # aten ops per host unit of roofsim's model
    # three more resident calls per layer: one KV head per slot, all four resident
    resident_call = (_ops_per_layer(HeadOffloadPlan(kv_heads_per_slot=1, resident_slots=4)) - resident) / 3
    # three more streamed calls per layer: four one-head slots against one four-head slot, all streamed
    streamed_call = (
        _ops_per_layer(HeadOffloadPlan(kv_heads_per_slot=1))
        - _ops_per_layer(HeadOffloadPlan(kv_heads_per_slot=4))
    ) / 3
    assert resident_call / per_unit == pytest.approx(ops.ATTN_CALL_KERNELS, rel=0.25)
    assert streamed_call / per_unit == pytest.approx(
        ops.ATTN_CALL_KERNELS + ops.STREAMED_CALL_EXTRA, rel=0.25
    )


def _runtime_call_counter(monkeypatch):
    """count(step): the CPU engine's event records and stream waits during one step (on CUDA each is one runtime
    call)."""
    from roofsim.executor import engine as E

    state = {"n": 0, "on": False}
    for name in ("event", "wait"):
        original = getattr(E.CpuEngine, name)

        def counted(self, *a, _f=original, **k):
            state["n"] += state["on"]
            return _f(self, *a, **k)

        monkeypatch.setattr(E.CpuEngine, name, counted)

    def count(step) -> int:
        state["n"], state["on"] = 0, True
        step()
        state["on"] = False
        return state["n"]

    return count


def test_model_runtime_calls_follow_the_executors(monkeypatch):
    """Event records and stream waits per attention call, as ops.ATTN_CALL_RUNTIME and
    STREAMED_CALL_RUNTIME_EXTRA charge them."""
    count = _runtime_call_counter(monkeypatch)

    def calls(plan) -> float:
        return _per_layer(plan, count, record=True)

    resident = calls(ResidentPlan())
    resident_call = (calls(HeadOffloadPlan(kv_heads_per_slot=1, resident_slots=4)) - resident) / 3
    streamed_call = (
        calls(HeadOffloadPlan(kv_heads_per_slot=1)) - calls(HeadOffloadPlan(kv_heads_per_slot=4))
    ) / 3
    assert resident_call == pytest.approx(ops.ATTN_CALL_RUNTIME, abs=1)
    assert streamed_call == pytest.approx(ops.ATTN_CALL_RUNTIME + ops.STREAMED_CALL_RUNTIME_EXTRA, abs=1.5)


def test_write_back_tail_saves_what_the_model_takes_off(monkeypatch):
    """write_back_tokens=N: averaged over N decode steps, a layer of four streamed one-head slots dispatches what
    ops.attention_op takes off (WRITE_BACK_KERNELS and WRITE_BACK_RUNTIME per skipped write-back) and adds
    (TAIL_KERNELS)."""
    tiny = ModelSpec(
        name="tiny", source="test", family="llama", n_layers=1, hidden=128, n_heads=8, n_kv_heads=4, head_dim=16,
        intermediate=128, vocab=128, max_positions=4096,
    )  # fmt: skip
    per_unit = _ops_per_layer(ResidentPlan()) / sum(op.kernels for op in ops.layer_ops(tiny, 1, 16, 1))
    count = _runtime_call_counter(monkeypatch)
    for n in (2, 8):

        def over_n(counter, _n=n):
            return lambda step: sum(counter(step) for _ in range(_n)) / _n

        plain, tail = (
            HeadOffloadPlan(kv_heads_per_slot=1),
            HeadOffloadPlan(kv_heads_per_slot=1, write_back_tokens=n),
        )
        aten = _per_layer(tail, over_n(_aten_ops)) - _per_layer(plain, over_n(_aten_ops))
        runtime = _per_layer(tail, over_n(count), record=True) - _per_layer(plain, over_n(count), record=True)
        before = ops.attention_op(tiny, 1, 16, 1, calls=4, streamed_calls=4)
        after = ops.attention_op(
            tiny, 1, 16, 1, calls=4, streamed_calls=4, write_back_tokens=n, tail_kernels=ops.TAIL_KERNELS
        )
        assert aten / per_unit == pytest.approx(after.kernels - before.kernels, rel=0.2), n
        assert runtime == pytest.approx(after.runtime_calls - before.runtime_calls, abs=0.5), n


def _prefill_ops_per_layer(plan, chunk: int = 8, past: int = 16) -> float:
    """aten ops one decoder layer dispatches in a forward of `chunk` tokens after `past` cached ones (6-layer minus
    2-layer tiny model, over 4)."""
    from roofsim.executor.build import make_cache
    from roofsim.executor.check import tiny_config
    from roofsim.executor.models import random_model

    counts = []
    for layers in (6, 2):
        model = random_model(
            tiny_config("llama", layers=layers, kv_heads=4, heads=8), "cpu", torch.float32, seed=0
        )
        cache = make_cache(model, plan, max_tokens=past + chunk + 8)
        try:
            with torch.no_grad():
                model(
                    torch.randint(0, 128, (1, past)), past_key_values=cache, use_cache=True, logits_to_keep=1
                )
                c = _Count()
                with c:
                    model(
                        torch.randint(0, 128, (1, chunk)),
                        past_key_values=cache,
                        use_cache=True,
                        logits_to_keep=1,
                    )
        finally:
            cache.close()
        counts.append(c.n)
    return (counts[0] - counts[1]) / 4


def test_a_chunk_after_a_past_adds_what_the_model_counts_per_call():
    """An attention call over a prefill chunk after a past (two parts and their merge) dispatches
    ops.PREFILL_CALL_EXTRA host units more than a decode call, resident and streamed alike."""
    tiny = ModelSpec(
        name="tiny", source="test", family="llama", n_layers=1, hidden=128, n_heads=8, n_kv_heads=4, head_dim=16,
        intermediate=128, vocab=128, max_positions=4096,
    )  # fmt: skip
    per_unit = _ops_per_layer(ResidentPlan()) / sum(op.kernels for op in ops.layer_ops(tiny, 1, 16, 1))
    resident, four = (
        _prefill_ops_per_layer(ResidentPlan()),
        HeadOffloadPlan(kv_heads_per_slot=1, resident_slots=4),
    )
    resident_call = (_prefill_ops_per_layer(four) - resident) / 3
    decode_resident_call = (_ops_per_layer(four) - _ops_per_layer(ResidentPlan())) / 3
    streamed_call = (
        _prefill_ops_per_layer(HeadOffloadPlan(kv_heads_per_slot=1))
        - _prefill_ops_per_layer(HeadOffloadPlan(kv_heads_per_slot=4))
    ) / 3
    decode_streamed_call = (
        _ops_per_layer(HeadOffloadPlan(kv_heads_per_slot=1))
        - _ops_per_layer(HeadOffloadPlan(kv_heads_per_slot=4))
    ) / 3
    for prefill, decode in ((resident_call, decode_resident_call), (streamed_call, decode_streamed_call)):
        assert (prefill - decode) / per_unit == pytest.approx(ops.PREFILL_CALL_EXTRA, rel=0.25)
    two_parts = ops.attention_op(tiny, 8, 16, 1, calls=4)
    one_part = ops.attention_op(tiny, 1, 16, 1, calls=4)
    assert two_parts.kernels - one_part.kernels == 4 * ops.PREFILL_CALL_EXTRA
    assert float(two_parts.prefill_calls) == 4 and float(one_part.prefill_calls) == 0


def test_fp8_adds_what_the_model_counts_per_call():
    """An fp8 call stores its new rows (re-scaling their block) and dequantises its KV before attending:
    kvformat.QUANT_KERNELS + DEQUANT_KERNELS host units more per call, resident or streamed."""
    from roofsim import kvformat

    tiny = ModelSpec(
        name="tiny", source="test", family="llama", n_layers=1, hidden=128, n_heads=8, n_kv_heads=4, head_dim=16,
        intermediate=128, vocab=128, max_positions=4096,
    )  # fmt: skip
    per_unit = _ops_per_layer(ResidentPlan()) / sum(op.kernels for op in ops.layer_ops(tiny, 1, 16, 1))
    units = kvformat.QUANT_KERNELS + kvformat.DEQUANT_KERNELS
    for plan in (
        HeadOffloadPlan(kv_heads_per_slot=1),
        HeadOffloadPlan(kv_heads_per_slot=1, resident_slots=4),
    ):
        fp8 = plan.model_copy(update={"kv_dtype": "fp8_e4m3"})
        per_call = (_ops_per_layer(fp8) - _ops_per_layer(plan)) / 4
        assert per_call / per_unit == pytest.approx(units, rel=0.25), plan


def _moe_ops_per_layer(plan, experts_per_token: int) -> float:
    """aten ops one tiny Qwen3-MoE decoder layer (16 experts) dispatches in a decode step, one token: its
    `experts_per_token` experts hit (6-layer minus 2-layer model, over 4)."""
    from roofsim.executor.build import make_cache
    from roofsim.executor.check import tiny_config
    from roofsim.executor.models import random_model

    counts = []
    for layers in (6, 2):
        config = tiny_config("qwen3_moe", layers=layers, kv_heads=4, heads=8)
        config.num_experts, config.num_experts_per_tok = 16, experts_per_token
        model = random_model(config, "cpu", torch.float32, seed=0)
        cache = make_cache(model, plan, max_tokens=40)
        ids = torch.randint(0, 128, (1, 16))
        try:
            with torch.no_grad():
                model(ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
                c = _Count()
                with c:
                    model(ids[:, -1:], past_key_values=cache, use_cache=True, logits_to_keep=1)
        finally:
            cache.close()
        counts.append(c.n)
    return (counts[0] - counts[1]) / 4


def test_a_moe_layer_dispatches_what_the_model_counts():
    """A MoE decode layer through the executor (the one-sync expert loop over the experts hit): its dispatches
    outside the hit experts match the model's units for the layer's other operators (router and top-k included),
    and each hit expert adds ops.EXPERT_KERNELS units, in the proportion of aten ops to units a Llama layer has."""
    from roofsim.specs import load_model

    llama = ModelSpec(
        name="tiny", source="test", family="llama", n_layers=1, hidden=128, n_heads=8, n_kv_heads=4, head_dim=16,
        intermediate=128, vocab=128, max_positions=4096,
    )  # fmt: skip
    per_unit = _ops_per_layer(ResidentPlan()) / sum(op.kernels for op in ops.layer_ops(llama, 1, 16, 1))
    two, four = (_moe_ops_per_layer(ResidentPlan(), k) for k in (2, 4))
    per_hit = (four - two) / 2
    moe = load_model("qwen3-30b-a3b").model_copy(
        update=dict(name="tiny-moe", hidden=64, n_heads=8, n_kv_heads=4, head_dim=16, n_experts=16,
                    experts_per_token=2, expert_intermediate=32, vocab=128, dense_layers=0)
    )  # fmt: skip
    counted = [op for op in ops.layer_ops(moe, 1, 16, 1) if op.name != "experts"]
    assert (two - 2 * per_hit) / per_unit == pytest.approx(sum(op.kernels for op in counted), rel=0.15)
    assert per_hit / per_unit == pytest.approx(ops.EXPERT_KERNELS, rel=0.2)
