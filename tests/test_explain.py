"""`roofsim plan`'s explanation names the bytes it counts: a decode step's host-to-GPU bytes split into streamed
weights (every layer's, pipeline.weight_stream) and the family's own payload (KV)."""

import pytest

from roofsim.families.registry import families
from roofsim.limits import Limits
from roofsim.plan import default_plan
from roofsim.planner import SearchSpace, explain, search
from roofsim.planner.explain import streamed_weight_bytes
from roofsim.predict import predict
from roofsim.specs import load_gpu, load_host, load_model
from roofsim.units import fmt_bytes
from roofsim.workload import Workload

RTX4090 = load_gpu("rtx4090")
EPYC = load_host("epyc-rome-milan")
WORK = Workload(context=2**18, gen=8)


@pytest.mark.parametrize("name", list(families()))
def test_streamed_weights_are_the_h2d_bytes_streaming_adds(name):
    """Conservation: what a decode step moves with weights streamed, less what the same plan moves with them
    resident, is every layer's weights, the bytes the explanation calls weights."""
    model = load_model("qwen2.5-14b")
    plan = default_plan(name).model_copy(update={"prefill_chunk": 4096})
    streamed = plan.model_copy(update={"weights": "streamed"})
    moved = predict(streamed, model, RTX4090, EPYC, WORK).summary.decode.h2d_bytes
    kv = predict(plan, model, RTX4090, EPYC, WORK).summary.decode.h2d_bytes
    weights = streamed_weight_bytes(streamed, model, RTX4090, EPYC, WORK)
    assert weights == model.n_layers * model.layer_weight_bytes > 0
    assert moved - kv == pytest.approx(weights, rel=1e-9)
    assert streamed_weight_bytes(plan, model, RTX4090, EPYC, WORK) == 0


def test_streamed_weights_are_called_weights_not_kv():
    """Qwen2.5-14B does not fit a 4090 with its weights: cpu_attention keeps its KV on the GPU and the CPU, and
    what crosses the link each token is the weights (the issue's "26.4 GB of KV" that was not KV)."""
    model = load_model("qwen2.5-14b")
    result = search(
        model, RTX4090, EPYC, WORK, Limits(), SearchSpace(families=("cpu_attention",)), refine_top=2
    )
    best = result.best.prediction
    assert best.plan.weights == "streamed" and best.summary.decode.bound == "h2d"
    text = explain(result, model, RTX4090, EPYC, Limits())
    weights = streamed_weight_bytes(best.plan, model, RTX4090, EPYC, WORK)
    kv = best.summary.decode.h2d_bytes - weights
    if kv > 0:
        said = f"over the link: {fmt_bytes(weights)} of streamed weights and {fmt_bytes(kv)} of KV."
    else:
        said = f"Each token brings {fmt_bytes(weights)} of streamed weights over the link, and no KV."
    assert said in text
    assert f"{fmt_bytes(best.summary.decode.h2d_bytes)} of KV" not in text


def test_kv_streamed_with_resident_weights_is_called_kv():
    model = load_model("llama-3-8b")
    work = Workload(context=2**20, gen=8)
    limits = Limits(host_mem_bytes=1e12)
    result = search(model, RTX4090, EPYC, work, limits, SearchSpace(families=("head_offload",)), refine_top=2)
    best = result.best.prediction
    assert best.plan.weights == "resident" and best.summary.decode.bound == "h2d"
    text = explain(result, model, RTX4090, EPYC, limits)
    assert f"Each token brings {fmt_bytes(best.summary.decode.h2d_bytes)} of KV over the link." in text
    assert "weights" not in text.split("over the link")[0]
