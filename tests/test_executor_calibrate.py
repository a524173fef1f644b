"""The calibration's framework-cost measurement runs the executor's real decode path (on the CPU here)."""

from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from roofsim.executor.calibrate.host import decode_layer_cost  # noqa: E402

LAYER_S, CALL_S, STREAMED_EXTRA_S, FP8_EXTRA_S = 1e-3, 1e-4, 5e-5, 3e-5


@pytest.fixture
def clock(monkeypatch):
    """A virtual host clock that only the executor's own work advances: each decoder layer's attention
    (PlanLayer.attend) LAYER_S, each slot's attention call (SlotLayer.attend_slot) CALL_S more, a streamed slot's
    STREAMED_EXTRA_S more again, a call over an fp8 store FP8_EXTRA_S more. The timers read it through time.perf_counter, so what a calibration function
    returns is the arithmetic of its timings over the executor's calls, whatever this machine's speed."""
    import time

    from roofsim.executor.cache import PlanLayer
    from roofsim.executor.slots import SlotLayer

    now = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: now[0])
    attend, attend_slot = PlanLayer.attend, SlotLayer.attend_slot

    def layer(self, *args, **kw):
        now[0] += LAYER_S
        return attend(self, *args, **kw)

    def slot(self, s, *args, **kw):
        now[0] += CALL_S + (0.0 if s.resident else STREAMED_EXTRA_S) + (FP8_EXTRA_S if self.fp8 else 0.0)
        return attend_slot(self, s, *args, **kw)

    monkeypatch.setattr(PlanLayer, "attend", layer)
    monkeypatch.setattr(SlotLayer, "attend_slot", slot)
    return now


def test_decode_layer_cost_is_measured_through_the_executor(clock):
    """The difference of a 6-layer and a 2-layer model's decode steps, over the executor's layers: each layer's
    cost, and nothing outside the layers (the virtual clock advances only inside them)."""
    per_layer_s, spec, step_s = decode_layer_cost("cpu", steps=3)
    assert per_layer_s == pytest.approx(LAYER_S + CALL_S) and step_s == pytest.approx(0.0, abs=1e-12)
    assert spec.n_layers == 1 and spec.hidden == 64


def test_tiny_layer_samples_give_the_mean_of_each_figure():
    from roofsim.executor.calibrate.host import mean_tiny

    _, spec, _ = decode_layer_cost("cpu", steps=2)
    samples = [(3e-3, spec, 1e-3), (1e-3, spec, 5e-3), (2e-3, spec, 3e-3)]
    per_layer, model, intercept = mean_tiny(samples)
    assert per_layer == pytest.approx(2e-3) and intercept == pytest.approx(3e-3) and model is spec


@pytest.mark.parametrize("name", ["llama-3-8b", "qwen2.5-7b", "phi-3-mini-128k", "opt-6.7b"])
def test_calibrated_gemms_are_the_layers_gemms(name):
    """The GEMMs calibration times are exactly one layer's linear weights (k x n summed = its matrix params)."""
    from roofsim.executor.calibrate.kernels import layer_gemm_shapes

    from roofsim.specs.model import load_model

    m = load_model(name)
    linear = (
        m.q_dim * m.hidden * 2
        + 2 * m.kv_dim * m.hidden
        + (3 if m.mlp == "gated" else 2) * m.hidden * m.intermediate
    )
    assert sum(k * n for _, k, n in layer_gemm_shapes(m)) == linear


def test_cpu_gather_rate_is_positive():
    from roofsim.executor.calibrate.cpu import cpu_gather_gbps

    from roofsim.specs.model import load_model

    assert cpu_gather_gbps(load_model("llama-3-8b"), tokens=4096, cold_bytes=64 << 20) > 0


def test_the_gather_is_timed_over_a_small_and_a_large_region():
    """Both regions' rates, keyed by region bytes; the measurements keep them through a JSON round trip."""
    from roofsim.executor.calibrate.cpu import cpu_gather_by_region_gbps

    from roofsim.calibration import Measurements
    from roofsim.specs.model import load_model

    small, large = 8 << 20, 32 << 20
    rates = cpu_gather_by_region_gbps(
        load_model("llama-3-8b"), tokens=1024, small=small, large=large, rounds=1
    )
    assert set(rates) == {small, large} and all(r > 0 for r in rates.values())
    committed = Path(__file__).parent.parent / "validation/results/h100-heldout4/calibrated"
    m = Measurements.model_validate_json((committed / "h100-sxm-calibrated-measurements.json").read_text())
    m = m.model_copy(update={"cpu_gather_by_region_gbps": rates})
    assert Measurements.model_validate_json(m.model_dump_json()).cpu_gather_by_region_gbps == rates


def test_attention_call_costs_are_measured_through_the_executor(clock):
    """One call over resident KV, what a streamed slot's call adds, and what an fp8 store adds to a call, from plans
    that differ only in their slots or their KV dtype."""
    from roofsim.executor.calibrate.attention import attention_call_costs

    call_s, streamed_s, fp8_s = attention_call_costs("cpu", steps=5)
    assert call_s == pytest.approx(CALL_S) and streamed_s == pytest.approx(STREAMED_EXTRA_S)
    assert fp8_s == pytest.approx(FP8_EXTRA_S)


def test_attention_calls_at_width_split_the_fp8_extra_and_price_the_offload_layer(clock):
    """The at-width figures (tiny shapes on the CPU): the same three costs, the fp8 extra apart for resident and
    streamed calls, and a one-slot head_offload layer over the resident plan's layer, which does the same work
    (one layer, one call) and so adds nothing on the virtual clock."""
    from roofsim.executor.calibrate.attention import attention_calls_at_width

    from roofsim.specs.model import load_model

    c = attention_calls_at_width(load_model("llama-3-8b"), "cpu", steps=5)
    assert c["call"] == pytest.approx(CALL_S) and c["streamed"] == pytest.approx(STREAMED_EXTRA_S)
    for key in ("fp8", "fp8_resident", "fp8_streamed"):
        assert c[key] == pytest.approx(FP8_EXTRA_S), key
    assert c["layer_over_resident"] == pytest.approx(0.0, abs=1e-12)


def test_new_shape_cost_is_the_first_call_at_a_new_past_less_a_repeat(monkeypatch):
    """A kernel that spends 30 ms setting up each new shape (as cuDNN's fused attention builds a plan per key
    length) is measured as 30 ms; one that does not is measured as nothing (a virtual clock: each call 1 ms)."""
    import time

    from roofsim.executor import attention as A
    from roofsim.executor.calibrate.attention import attention_new_shape_s

    from roofsim.specs.model import load_model

    spec = load_model("llama-3-8b")
    now = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: now[0])
    real = A.attend_parts
    seen = set()

    def costs(first_s):
        def attend_parts(q, parts, scale):
            shape = tuple(k.shape[-2] for k, _, _ in parts)
            now[0] += 1e-3 + (first_s if shape not in seen else 0.0)
            seen.add(shape)
            return real(q, parts, scale)

        return attend_parts

    monkeypatch.setattr(A, "attend_parts", costs(0.03))
    assert attention_new_shape_s(spec, "cpu", chunk=64) == pytest.approx(0.03)
    seen.clear()
    monkeypatch.setattr(A, "attend_parts", costs(0.0))
    assert attention_new_shape_s(spec, "cpu", chunk=64) == pytest.approx(0.0, abs=1e-12)


def test_issue_beside_the_cpu_worker_is_measured_while_it_scans(clock, monkeypatch):
    """The tiny layers timed while the CPU worker scans cold host KV (small blocks here), through the executor's
    decode path; the worker's loop ends with the measurement."""
    from roofsim.executor.calibrate import host
    from roofsim.executor.cpu_worker import on_worker

    from roofsim.specs import load_model

    scans = []
    timed_scans = host.timed_scans
    monkeypatch.setattr(host, "timed_scans", lambda *a: scans.append(timed_scans(*a)))
    per_layer_s = host.decode_layer_cost_beside_cpu(
        load_model("llama-3-8b"), "cpu", steps=3, tokens=1025, cold_bytes=1 << 22
    )
    assert per_layer_s == pytest.approx(LAYER_S + CALL_S)
    assert scans  # the worker scanned beside the timed steps
    assert on_worker(lambda: 7) == 7  # the worker is free again: its scan loop stopped


def test_elementwise_kernels_are_timed_with_the_bytes_the_operator_model_counts():
    from roofsim.executor.calibrate.kernels import vector_ops

    from roofsim import ops
    from roofsim.specs import load_model

    model = load_model("llama-3-8b")
    points = vector_ops(model, "cpu", tokens=64)
    counted = {
        op.name: op for op in ops.pre_attention_ops(model, 64, 1) + ops.post_attention_ops(model, 64, 1)
    }
    names = ("residual_1", "input_norm", "rope", "act_mul")
    assert [p.nbytes for p in points] == [int(float(counted[n].hbm_bytes)) for n in names]
    assert all(p.seconds > 0 for p in points)


def test_trimmed_mean_drops_a_hiccup_but_keeps_a_slow_spell():
    """The calibration's per-call figures average the host's speed: one outlier step is cut, a run of slow steps
    (a spell of the host) is not."""
    from roofsim.executor.calibrate.host import trimmed_mean

    assert trimmed_mean([1.0] * 9 + [100.0]) == 1.0
    assert trimmed_mean([1.0] * 5 + [2.0] * 5) == 1.5
    assert trimmed_mean([1.0, 3.0]) == 2.0


def test_the_worker_round_trip_is_timed_on_the_cpu_worker():
    """worker_round_trip_s runs its job on cpu_attention's worker thread (not the caller's) and returns a
    positive median well under a second."""
    import threading

    from roofsim.executor.calibrate import host
    from roofsim.executor.cpu_worker import worker as _worker

    seconds = host.worker_round_trip_s(n=20)
    assert 0.0 < seconds < 1.0
    assert _worker().submit(threading.get_ident).result() != threading.get_ident()


@pytest.mark.gpu
def test_decode_layer_cost_at_the_models_width_times_its_layer_shapes():
    """On a GPU the per-layer issue cost is timed at the calibrated model's layer shapes (a 128-token vocabulary),
    and the spec it returns for the kernel count is that model's layer."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from roofsim.specs import load_model

    per_layer_s, spec, step_s = decode_layer_cost("cuda", steps=5, width=load_model("llama-3-8b"))
    assert 0 < per_layer_s < 0.05 and step_s >= 0
    assert spec.hidden == 4096 and spec.n_layers == 1 and spec.vocab == 128


def test_the_layer_cost_beside_the_link_needs_a_link():
    """Without CUDA nothing streams over a link, so the measurement is absent rather than a CPU stand-in."""
    from roofsim.executor.calibrate import host

    from roofsim.specs import load_model

    assert host.decode_layer_cost_beside_link(load_model("llama-3-8b"), "cpu", steps=2) is None


@pytest.mark.gpu
def test_the_layer_cost_beside_the_link_is_timed_while_copies_stream():
    """On a GPU: the model-width layer's issue cost with pinned copies streaming on a side stream, a positive
    figure in the layer cost's range; the helper thread's copies stop with it (nothing is left queued)."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from roofsim.executor.calibrate import host

    from roofsim.specs import load_model

    per_layer_s = host.decode_layer_cost_beside_link(
        load_model("llama-3-8b"), "cuda", steps=5, nbytes=64 << 20
    )
    assert 0 < per_layer_s < 0.05
    torch.cuda.synchronize()


@pytest.mark.gpu
def test_attention_call_costs_at_the_models_width_compare_its_own_heads():
    """On a GPU the call costs are also timed at Llama-3-8B's layer shapes, one slot of its 8 KV heads against 8
    one-head slots, with the fp8 extras apart and the one-slot layer over the resident one: non-negative figures
    under 10 ms each."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from roofsim.executor.calibrate.attention import attention_calls_at_width

    from roofsim.specs import load_model

    costs = attention_calls_at_width(load_model("llama-3-8b"), "cuda", steps=3)
    assert set(costs) == {"call", "streamed", "fp8", "fp8_resident", "fp8_streamed", "layer_over_resident"}
    assert all(0 <= c < 1e-2 for c in costs.values())


@pytest.mark.gpu
def test_the_gathered_stage_copy_is_timed_with_its_control():
    """On the GPU: the copy of rows just gathered into a pinned stage and the same stage again both give a rate
    below the link's physical ceiling (PCIe 5.0 x16: 64 GB/s) and above a tenth of it."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from roofsim.executor.calibrate.link import h2d_after_gather

    from roofsim.specs import load_model

    after, again = h2d_after_gather(load_model("llama-3-8b"), tokens=16384, cold_bytes=1 << 28)
    for rate in (after, again):
        assert 6.4e9 < rate < 64e9


def test_the_step_gauge_times_a_tiny_decode_step_and_starts_a_new_cache_when_full(monkeypatch):
    """launchpace.step_us issues one decode step of a tiny two-layer Llama through the executor on the CPU; past
    its cache's length it starts a new cache instead of failing, and goes on timing."""
    from roofsim.executor import launchpace

    monkeypatch.setattr(launchpace, "STEP_GAUGE_TOKENS", 20)
    gauge = launchpace.StepGauge("cpu")
    first = gauge.cache
    times = [gauge.step() for _ in range(6)]
    assert all(t > 0 for t in times) and gauge.cache is not first and gauge.used < 20


# measure()'s order of timings (the gauge-sampled ones among them): the same machine gives the same Measurements
MEASURE_ORDER = (
    ["decode_layer_cost", "copies", "copies", "copies"]
    + ["back_to_back"] * 5
    + ["bidirectional_gbps", "d2d_gbps", "gemms", "attention_points", "head_dim_points", "vector_ops"]
    + ["fp8_passes", "fp8_writes"]
    + ["decode_layer_cost"]
    + ["sync_us", "gpu_kernel_us", "decode_gemv_points", "graph_kernel_us", "decode_replay_points"]
    + ["topk_points", "attention_call_costs", "attention_calls_at_width", "expert_costs_s", "attention_new_shape_s"]
    + ["prefill_call_extra_s", "decode_layer_cost"]  # the MoE layer's diagnostic
    + ["decode_layer_cost_beside_cpu", "decode_layer_cost_beside_link", "worker_round_trip_s", "gemms_held"]
    + ["decode_layer_cost"]
    + ["memcpy_gbps"] + ["cpu_attention_point"] * 4
    + ["cpu_attention_groups", "cpu_attention_slots", "cpu_gather_gbps", "cpu_gather_by_region_gbps"]
    + ["h2d_after_gather", "matmul_tflops"]
    + ["fingerprint"]
)  # fmt: skip


def test_measure_runs_its_timings_in_order_and_labels_each_gauge_sample(monkeypatch):
    """measure() with every timing replaced by a stand-in that logs its name: they run in MEASURE_ORDER, the gauge
    samples taken inside the tiny layers and the attention calls are labelled by what they sat beside, and the
    CPU block lands in Measurements' fields of its names."""
    import types

    import torch
    from roofsim.executor import calibrate
    from roofsim.executor.calibrate import attention, cpu, host, kernels, link

    from roofsim.calibration import BatchPoint, CopyPoint, FlopPoint, KernelPoint, pace_beside
    from roofsim.specs import load_model
    from roofsim.trace import Fingerprint

    model = load_model("llama-3-8b")
    log: list[str] = []
    point = CopyPoint(nbytes=1, seconds=1.0)

    def fake(module, name, result):
        def stand_in(*args, **kwargs):
            log.append(name)
            for key in ("pace", "launch", "step_pace"):
                if kwargs.get(key) is not None:
                    kwargs[key] += [1.0, 2.0]  # two gauge samples beside this timing
            return result

        monkeypatch.setattr(module, name, stand_in)

    fake(host, "decode_layer_cost", (1e-5, model, 2e-5))
    fake(link, "copies", [point])
    fake(link, "back_to_back", BatchPoint(copies=1, nbytes_each=1, seconds=1.0))
    fake(link, "bidirectional_gbps", 1.0)
    fake(link, "d2d_gbps", 2.0)
    fake(kernels, "gemms", [FlopPoint(label="g", flops=1.0, seconds=1.0)])
    fake(attention, "attention_points", ([], [], [point]))
    fake(attention, "head_dim_points", {128: FlopPoint(label="d", flops=1.0, seconds=1.0)})
    fake(kernels, "vector_ops", [point])
    fake(host, "sync_us", 3.0)
    fake(kernels, "gpu_kernel_us", 4.0)
    fake(kernels, "decode_gemv_points", [KernelPoint(label="q", nbytes=1, seconds=1.0)])

    def graph_fails():
        log.append("graph_kernel_us")
        raise RuntimeError("no graphs here")

    monkeypatch.setattr(kernels, "graph_kernel_us", graph_fails)
    fake(attention, "decode_replay_points", [point])
    fake(kernels, "topk_points", [point])
    fake(kernels, "fp8_passes", [point])
    fake(kernels, "fp8_writes", [point])
    fake(attention, "attention_call_costs", (6.0, 7.0, 0.5))
    fake(attention, "attention_calls_at_width", {"call": 6.5})
    fake(kernels, "expert_costs_s", (2.5e-4, 3e-5))
    fake(attention, "attention_new_shape_s", 8.0)
    fake(attention, "prefill_call_extra_s", 9.0)
    fake(host, "decode_layer_cost_beside_cpu", 10.0)
    fake(host, "decode_layer_cost_beside_link", 10.5)
    fake(host, "worker_round_trip_s", 11.0)
    fake(kernels, "gemms_held", [FlopPoint(label="w", flops=1.0, seconds=1.0, rows=4.0)])
    fake(cpu, "memcpy_gbps", 12.0)
    fake(cpu, "cpu_attention_point", (point, 13.0))
    fake(cpu, "cpu_attention_groups", {1: point})
    fake(cpu, "cpu_attention_slots", {1: {1: [point]}})
    fake(cpu, "cpu_gather_gbps", 14.0)
    fake(cpu, "cpu_gather_by_region_gbps", {1 << 30: 14.0, 8 << 30: 7.0})
    fake(link, "h2d_after_gather", (15e9, 16e9))
    fake(cpu, "matmul_tflops", 17.0)
    fake(calibrate, "fingerprint", Fingerprint(gpu_name="stand-in"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: type("P", (), {"total_memory": 80e9}))
    # measure() turns TF32 on for its GEMMs: a stand-in for torch's cuBLAS settings takes it (the real one's
    # setter reaches into the CUDA runtime, which this build may not have)
    monkeypatch.setattr(torch.backends.cuda, "matmul", types.SimpleNamespace(allow_tf32=False))

    m = calibrate.measure(model)
    assert log == MEASURE_ORDER
    assert (m.expert_call_s, m.expert_fetch_s) == (2.5e-4, 3e-5)
    assert m.moe_layer_s == 1e-5 and m.moe_layer_pace_us == [
        1.0,
        2.0,
    ]  # its own gauge samples, not the layers'
    assert len(m.back_to_back_h2d) == 3 and len(m.back_to_back_h2d_allocated) == 2
    assert pace_beside(m) == ["layer0"] * 2 + ["layer1"] * 2 + ["calls"] * 2 + ["layer2"] * 2
    assert len(m.host_pace_us) == len(m.launch_pace_us) == len(m.step_pace_us) == 8
    assert m.fingerprint == {"gpu_name": "stand-in"} and m.cpu_scan_gap_s == cpu.SCAN_GAP_S
    assert (m.cpu_copy_gbps, m.h2d_beside_cpu_gbps) == (12.0, 13.0)
    assert (m.tiny_layer_beside_cpu_s, m.tiny_layer_beside_link_s) == (10.0, 10.5)
    assert m.attention_calls_at_width_s == {"call": 6.5} and m.gemm_held[0].rows == 4.0
    assert (m.cpu_gather_gbps, m.cpu_matmul_tflops) == (14.0, 17.0)
    assert m.cpu_gather_by_region_gbps == {1 << 30: 14.0, 8 << 30: 7.0}
    assert (m.h2d_after_gather_gbps, m.h2d_stage_again_gbps) == (15.0, 16.0)
    assert len(m.cpu_attention) == 3 and len(m.cpu_attention_beside_h2d) == 1
    assert set(m.attention_head_dims) == {128} and m.attention_head_dim_at == 128
    # recorded-only timings: a failing one is left out, the calibration goes on
    assert (
        m.decode_gemv[0].label == "q" and m.attention_decode_replay == [point] and m.graph_kernel_us is None
    )


def test_the_expert_loops_are_timed_per_expert_hit():
    """kernels.expert_costs_s runs the executor's resident expert loop and its streamed fetch (on the CPU here)
    and gives seconds per expert hit of each, the fetch's beyond the loop's."""
    from roofsim.executor.calibrate import kernels

    loop, fetch = kernels.expert_costs_s("cpu", width=(128, 64))
    assert loop > 0.0 and fetch >= 0.0


def test_the_decode_gemvs_are_the_layers_shapes_and_the_lm_head_one_token_each():
    """kernels.decode_gemv_points times one token's GEMV at each of a layer's weight shapes and the LM head's (on
    the CPU here, a tiny model), each with its weight's bytes."""
    from roofsim.executor.calibrate import kernels

    from roofsim.specs import load_model

    tiny = load_model("llama-3-8b").model_copy(
        update=dict(hidden=64, intermediate=128, vocab=256, n_heads=4, n_kv_heads=2, head_dim=16)
    )
    points = kernels.decode_gemv_points(tiny, device="cpu")
    shapes = [*kernels.layer_gemm_shapes(tiny), ("lm_head", 64, 256)]
    assert [p.label for p in points] == [f"decode {n} 1x{k}x{m}" for n, k, m in shapes]
    assert [p.nbytes for p in points] == [2 * k * m for _, k, m in shapes]
    assert all(p.seconds > 0 for p in points)


@pytest.mark.gpu
def test_the_layers_gemms_held_are_timed_window_by_window():
    """gemms_held gives one point per window, in order, each a whole number of rounds of the layer's GEMMs at the
    rows asked for, and a measurements file with them gives the held ratio against gemm's points of those rows."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from roofsim.executor.calibrate.kernels import gemms, gemms_held, layer_gemm_shapes

    from roofsim.calibration import Measurements, gemm_held_ratio
    from roofsim.specs.model import load_model

    m = load_model("llama-3-8b")
    held = gemms_held(m, seconds=0.5, window_s=0.05, idle_s=0.1)
    per_round = sum(2.0 * 16384 * k * n for _, k, n in layer_gemm_shapes(m))
    assert len(held) >= 2 and all(p.rows == 16384 and p.seconds > 0 for p in held)
    assert all((p.flops / per_round).is_integer() for p in held)
    root = Path(__file__).parent.parent
    base = Measurements.model_validate_json(
        (root / "validation/results/h100/s22/h100-sxm-calibrated-measurements.json").read_text()
    )
    ratio = gemm_held_ratio(base.model_copy(update={"gemm": gemms(m), "gemm_held": held}))
    assert 0.5 < ratio < 1.5


@pytest.mark.gpu
def test_the_replayed_step_kernels_are_timed_on_the_gpu():
    """On a GPU: a tiny kernel replayed from a graph costs under the 2-20 us a queued one does at most, and the
    replayed decode kernel's time grows with the keys it reads."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from roofsim.executor.calibrate import attention, kernels

    from roofsim.specs import load_model

    assert 0 < kernels.graph_kernel_us() < 20
    points = attention.decode_replay_points(load_model("llama-3-8b"), lengths=(4096, 65536))
    assert points[0].nbytes < points[1].nbytes and 0 < points[0].seconds < points[1].seconds


def test_a_prefill_chunks_fp8_write_is_timed_with_the_bytes_the_operator_model_counts():
    """kernels.fp8_writes stores a chunk's rows in fp8 as the executor does (on the CPU here, a tiny model) and
    times each with the write bytes roofsim's operator model counts for that chunk."""
    from roofsim.executor.calibrate import kernels

    from roofsim import ops
    from roofsim.specs import load_model

    tiny = load_model("llama-3-8b").model_copy(update=dict(n_heads=4, n_kv_heads=2, head_dim=16))
    points = kernels.fp8_writes(tiny, device="cpu")
    counted = [
        ops.attention_op(tiny, C, P, 1, kv_dtype="fp8_e4m3").fp8_write_bytes
        for C, P in kernels.FP8_WRITE_CHUNKS
    ]
    assert [p.nbytes for p in points] == [int(float(c)) for c in counted]
    assert all(p.seconds > 0 for p in points) and points[0].nbytes < points[1].nbytes
