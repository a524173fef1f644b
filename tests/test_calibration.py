"""Fitting calibration measurements into a profile: fed the H100 probe's numbers, the fit must give back the
values the shipped H100 spec derived from them by hand, and the written profile must load as a --gpu."""

import json
from pathlib import Path

import pytest

from roofsim.calibration import BatchPoint, CopyPoint, FlopPoint, Measurements, fit, write_profile
from roofsim.specs import load_gpu, load_host, load_model
from roofsim.specs.hardware import default_host_of
from roofsim.specs.model import ModelSpec
from roofsim.specs.sourced import Sourced

PROBE = json.loads((Path(__file__).parent.parent / "validation/results/h100/h100-probe.json").read_text())
TINY = ModelSpec(
    name="tiny", source="test", family="llama", n_layers=1, hidden=64, n_heads=4, n_kv_heads=2, head_dim=16,
    intermediate=128, vocab=128, max_positions=1024,
)  # fmt: skip


def probe_measurements() -> Measurements:
    pinned = PROBE["pcie_pinned"]
    sizes = [int(n) for n in pinned if int(n) != 67108864]  # the probe's 64 MiB point is an outlier (23 GB/s)

    def points(key):
        return [CopyPoint(nbytes=n, seconds=n / (pinned[str(n)][key] * 1e9)) for n in sizes]

    mm = PROBE["mm_8192x8192x8192"]
    att = PROBE["attention"]["prefill_L32768"]
    return Measurements(
        fingerprint={"gpu_name": "NVIDIA H100 80GB HBM3", "torch": PROBE["torch"]},
        total_memory_bytes=PROBE["props"]["mem"],
        h2d=points("h2d_GBps"),
        d2h=points("d2h_GBps"),
        pageable_h2d=[CopyPoint(nbytes=2**28, seconds=2**28 / (PROBE["pcie_pageable_h2d_GBps"] * 1e9))],
        back_to_back_h2d=[
            BatchPoint(
                copies=c,
                nbytes_each=2**26 // c,
                seconds=2**26 / (PROBE[f"h2d_64MB_in_{c}_chunks_GBps"] * 1e9),
            )
            for c in (16, 256, 1024)
        ],
        bidirectional_total_gbps=PROBE["bidir_total_GBps"],
        d2d_copy_gbps=PROBE["hbm_copy_GBps_rw"],
        gemm=[FlopPoint(label="8192^3", flops=2 * 8192**3, seconds=mm["s"])],
        attention_prefill=[
            FlopPoint(label="L32768", flops=att["tflops"] * 1e12 * att["s"], seconds=att["s"])
        ],
        attention_decode=[CopyPoint(nbytes=2**28, seconds=1e-4)],
        sync_us=23.0,
        tiny_layer_s=150e-6,
        tiny_layer_model=TINY,
        cpu_copy_gbps=PROBE["cpu_copy_GBps_rw"],
        cpu_attention=[CopyPoint(nbytes=2**28, seconds=2**28 / 20e9)],
        cpu_matmul_tflops=1.5,
        cpu_threads=PROBE["cpu_threads"],
        host_ram_bytes=128e9,
    )


def test_fit_gives_back_the_hand_derived_h100_values():
    spec = load_gpu("h100-sxm")
    f = fit(spec, probe_measurements())
    link, eff, run = f["link"], f["efficiency"], f["runtime"]
    assert link["h2d_gbps"][0] == pytest.approx(spec.link.h2d_gbps.value, rel=0.03)
    assert link["d2h_gbps"][0] == pytest.approx(spec.link.d2h_gbps.value, rel=0.03)
    assert link["copy_latency_us"][0] == pytest.approx(spec.link.copy_latency_us.value, abs=1.5)
    assert link["copy_min_us"][0] == pytest.approx(spec.link.copy_min_us.value, rel=0.02)
    assert link["copy_gap_us"][0] == pytest.approx(spec.link.copy_gap_us.value, abs=1.0)
    assert link["duplex_efficiency"][0] == pytest.approx(spec.link.duplex_efficiency.value, abs=0.02)
    assert run["copy_issue_us"][0] == pytest.approx(spec.runtime.copy_issue_us.value, rel=0.03)
    assert eff["gemm"][0] == pytest.approx(spec.efficiency.gemm.value, abs=0.01)
    assert eff["attention"][0] == pytest.approx(spec.efficiency.attention.value, abs=0.01)
    assert eff["memory"][0] == pytest.approx(spec.efficiency.memory.value, abs=0.01)


def test_allocated_memory_back_to_back_copies_give_their_own_gap():
    """The batches copied from torch's pinned allocator's memory give link.copy_gap_allocated_us by the same rule
    as copy_gap_us (the few-copies batch's time a copy over its bytes at the isolated rate); without them, none."""
    spec = load_gpu("h100-sxm")
    m = probe_measurements()
    assert "copy_gap_allocated_us" not in fit(spec, m)["link"]
    h2d = fit(spec, m)["link"]["h2d_gbps"][0] * 1e9
    slow = [BatchPoint(copies=16, nbytes_each=2**22, seconds=16 * (2**22 / h2d + 50e-6))]
    link = fit(spec, m.model_copy(update={"back_to_back_h2d_allocated": slow}))["link"]
    assert link["copy_gap_allocated_us"][0] == pytest.approx(50.0, rel=1e-6)
    assert link["copy_gap_us"][0] == fit(spec, m)["link"]["copy_gap_us"][0]


def test_written_profile_loads_as_a_gpu_with_its_host(tmp_path):
    spec, host = load_gpu("h100-sxm"), load_host("sapphire-rapids")
    gpu_path, host_path = write_profile(spec, host, probe_measurements(), tmp_path)
    profile = load_gpu(str(gpu_path))
    assert profile.name == "h100-sxm-calibrated" and profile.fingerprint["gpu_name"].startswith("NVIDIA H100")
    assert profile.link.h2d_gbps.measured and profile.compute.bf16_tflops.source  # measured vs carried
    assert profile.link.copy_engines.value == spec.link.copy_engines.value
    calibrated_host = default_host_of(str(gpu_path), profile)
    assert calibrated_host.cpu_attention_gbps.value == pytest.approx(20, rel=0.01)
    assert (tmp_path / "h100-sxm-calibrated-measurements.json").is_file()
    from roofsim.cli import main

    assert main(["predict", "--gpu", str(gpu_path), "--context", "64K", "--plan", "head_offload"]) == 0


def test_cpu_attention_fits_a_fixed_cost_per_call_and_a_scan_rate():
    """Sizes on a line time = fixed + bytes / rate give both back; the model then prices one call as both (the
    H100 campaign's small CPU calls ran ~2x slower per byte than its median rate said)."""
    from roofsim.calibration import fit_host

    m = probe_measurements()
    m.cpu_attention = [CopyPoint(nbytes=n, seconds=1.5e-3 + n / 30e9) for n in (2**25, 2**27, 2**29)]
    f = fit_host(m)
    assert f["cpu_attention_gbps"][0] == pytest.approx(30, rel=1e-6)
    assert f["cpu_attention_call_us"][0] == pytest.approx(1500, rel=1e-6)
    host = load_host("sapphire-rapids")
    with_call = host.model_copy(update={"cpu_attention_call_us": Sourced(value=1500, measured="test")})
    small, big = 2**25, 2**29
    assert with_call.cpu_attention_s(small) - host.cpu_attention_s(small) == pytest.approx(1.5e-3)
    assert with_call.cpu_attention_s(big) > with_call.cpu_attention_s(small)
    m.cpu_attention = [CopyPoint(nbytes=2**28, seconds=2**28 / 20e9)]  # one size: a rate alone
    assert "cpu_attention_call_us" not in fit_host(m)


def test_kernel_cost_comes_from_the_tiny_layer_and_the_operator_model():
    f = fit(load_gpu("h100-sxm"), probe_measurements())
    from roofsim import ops

    kernels = sum(op.kernels for op in ops.layer_ops(TINY, 1, 16, 1))
    assert f["efficiency"]["kernel_us"][0] == pytest.approx(150 / kernels)
    assert load_model("llama-3-8b")  # the default calibration model exists


def test_measured_call_costs_are_written_and_price_the_attention_calls(tmp_path):
    """The optional micro-benchmarks (GPU kernel floor, attention call costs, CPU gather) land in the profile, and
    a dearer measured call makes a many-slot decode step slower, never faster."""
    m = probe_measurements().model_copy(
        update={
            "gpu_kernel_us": 2.5,
            "attention_call_s": 400e-6,
            "streamed_call_s": 300e-6,
            "cpu_gather_gbps": 30.0,
            "topk_gelems": 1.5,
        }
    )
    spec, host = load_gpu("h100-sxm"), load_host("sapphire-rapids")
    gpu_path, _ = write_profile(spec, host, m, tmp_path)
    profile = load_gpu(str(gpu_path))
    assert profile.efficiency.gpu_kernel_us.value == pytest.approx(2.5)
    assert profile.runtime.attention_call_us.value == pytest.approx(400)
    assert profile.efficiency.topk_gelems.value == pytest.approx(1.5)
    assert default_host_of(str(gpu_path), profile).cpu_gather_gbps.value == pytest.approx(30)

    from roofsim.families import HeadOffloadPlan
    from roofsim.predict import predict
    from roofsim.workload import Workload

    work = Workload(context=65536, gen=4)
    plan = HeadOffloadPlan(kv_heads_per_slot=1, resident_slots=4)
    model = load_model("llama-3-8b")
    cheap = profile.model_copy(
        update={
            "runtime": profile.runtime.model_copy(
                update={"attention_call_us": None, "streamed_call_us": None}
            )
        }
    )
    dear = predict(plan, model, profile, host, work).summary.decode_s_per_token
    counted = predict(plan, model, cheap, host, work).summary.decode_s_per_token
    assert dear > counted


def test_a_measured_prefill_call_cost_prices_chunks_after_a_past_only(tmp_path):
    """prefill_call_s lands in the profile as prefill_call_us; a dearer one makes a chunked prefill of many slots
    slower in both models, and leaves decode (one-part calls) alone."""
    from roofsim.families import HeadOffloadPlan
    from roofsim.predict import predict
    from roofsim.sim import simulate
    from roofsim.workload import Workload

    spec, host, model = load_gpu("h100-sxm"), load_host("sapphire-rapids"), load_model("llama-3-8b")
    costs = {}
    for extra in (50e-6, 900e-6):
        m = probe_measurements().model_copy(update={"prefill_call_s": extra, "cpu_scan_gap_s": 2e-3})
        gpu_path, host_path = write_profile(spec, host, m, tmp_path / f"{extra}")
        profile = load_gpu(str(gpu_path))
        assert profile.runtime.prefill_call_us.value == pytest.approx(extra * 1e6)
        plan = HeadOffloadPlan(kv_heads_per_slot=1, resident_slots=4, prefill_chunk=2048)
        work = Workload(context=32768, gen=4)
        analytic = predict(plan, model, profile, host, work)
        sim = simulate(plan, model, profile, host, work, keep="none")
        costs[extra] = [
            (analytic.summary.prefill_s, analytic.summary.decode_s_per_token),
            (sim.summary.prefill_s, sim.summary.decode_s_per_token),
        ]
    for (cheap_prefill, cheap_decode), (dear_prefill, dear_decode) in zip(
        costs[50e-6], costs[900e-6], strict=True
    ):
        assert dear_prefill > cheap_prefill
        assert dear_decode == pytest.approx(cheap_decode, rel=1e-9)


def test_a_measured_topk_rate_prices_the_selections():
    """sparse_fetch's and evict's top-k take the calibrated rate where a profile has one: a slower rate makes
    their steps slower, never faster, and leaves the exact families alone."""
    from roofsim.families import EvictPlan, HeadOffloadPlan, SparseFetchPlan
    from roofsim.predict import predict
    from roofsim.specs.hardware import SourcedNumber
    from roofsim.workload import Workload

    gpu, host, model = load_gpu("h100-sxm"), load_host("sapphire-rapids"), load_model("llama-3-8b")

    def with_rate(g):
        eff = gpu.efficiency.model_copy(update={"topk_gelems": SourcedNumber(value=g, assumed="test")})
        return gpu.model_copy(update={"efficiency": eff})

    work = Workload(context=65536, gen=4)
    fast, slow = with_rate(100.0), with_rate(0.1)
    sparse = SparseFetchPlan(prefill_chunk=8192)
    assert (
        predict(sparse, model, slow, host, work).summary.decode_s_per_token
        > predict(sparse, model, fast, host, work).summary.decode_s_per_token
    )
    evict = EvictPlan(prefill_chunk=4096)
    assert (
        predict(evict, model, slow, host, work).summary.prefill_s
        > predict(evict, model, fast, host, work).summary.prefill_s
    )
    head = HeadOffloadPlan()
    assert (
        predict(head, model, slow, host, work).summary.decode_s_per_token
        == predict(head, model, fast, host, work).summary.decode_s_per_token
    )


def test_topk_timed_at_several_lengths_gives_a_fixed_cost_per_call_and_a_rate(tmp_path):
    """Top-k calls timed at several row lengths fit a line: its slope is topk_gelems and its intercept
    topk_call_us, which each selection pays once (nothing where a step selects nothing); older measurements with
    one rate keep pricing at that rate with no fixed part."""
    from roofsim.ops import topk_op
    from roofsim.roofline import op_time

    spec, host = load_gpu("h100-sxm"), load_host("sapphire-rapids")
    base = probe_measurements().model_copy(update={"cpu_scan_gap_s": 2e-3})
    points = [CopyPoint(nbytes=e, seconds=300e-6 + e / 3e9) for e in (131072, 524288, 2097152)]
    fitted = fit(spec, base.model_copy(update={"topk": points}))["efficiency"]
    assert fitted["topk_gelems"][0] == pytest.approx(3.0)
    assert fitted["topk_call_us"][0] == pytest.approx(300.0)
    profile = load_gpu(str(write_profile(spec, host, base.model_copy(update={"topk": points}), tmp_path)[0]))
    op = topk_op("select", 8, [0.0, 196608.0], 19661, 2)
    t = op_time(op, profile)
    assert float(t.hbm_s[0]) == 0.0
    assert float(t.hbm_s[1]) == pytest.approx(300e-6 + 8 * 196608 / 3e9)
    old = fit(spec, base.model_copy(update={"topk_gelems": 1.5}))["efficiency"]
    assert old["topk_gelems"][0] == 1.5 and "topk_call_us" not in old


def test_a_measured_shape_set_up_costs_each_new_prefill_chunk_once():
    """A profile whose attention pays a set-up per new shape: each prefill chunk after the second (the warm-up
    covers a chunk with no past and one after a chunk) costs that once per KV-head count a call covers, in the
    analytic model and the simulator alike; decode is untouched."""
    from roofsim.families import HeadOffloadPlan, ResidentPlan
    from roofsim.predict import predict
    from roofsim.sim import simulate
    from roofsim.workload import Workload

    gpu, host, model = load_gpu("h100-sxm"), load_host("sapphire-rapids"), load_model("llama-3-8b")
    rt = gpu.runtime.model_copy(update={"attention_shape_us": Sourced(value=50_000, measured="test")})
    slow = gpu.model_copy(update={"runtime": rt})
    work = Workload(context=65536, gen=2)
    for plan, chunks in ((HeadOffloadPlan(prefill_chunk=8192), 8), (ResidentPlan(prefill_chunk=16384), 4)):
        extra = 0.05 * (chunks - 2)
        a, b = predict(plan, model, gpu, host, work), predict(plan, model, slow, host, work)
        assert b.summary.prefill.time_s - a.summary.prefill.time_s == pytest.approx(extra, rel=1e-6)
        assert b.summary.decode.time_s == a.summary.decode.time_s
        sa, sb = simulate(plan, model, gpu, host, work), simulate(plan, model, slow, host, work)
        assert sb.summary.prefill_s - sa.summary.prefill_s == pytest.approx(extra, rel=0.1)
        assert sb.summary.decode.step_s == pytest.approx(sa.summary.decode.step_s, rel=1e-9)
    m = probe_measurements()
    m.attention_new_shape_s = 0.061
    assert fit(gpu, m)["runtime"]["attention_shape_us"][0] == pytest.approx(61_000)


def test_step_preamble_adds_to_every_step_and_delays_the_first_prefetch():
    """A measured step preamble (the forward's host time outside its layers) adds its length to each decode step,
    in the analytic model and the simulator alike, whether the step waits on the host, the GPU or the link; a
    streamed step's first copy goes out only after it and layer 0's projections, as the executor issues it at
    layer 0's cache update. The fit takes the tiny model's intercept less the kernels counted outside layers."""
    from roofsim import ops
    from roofsim.families import CpuAttentionPlan, HeadOffloadPlan, KvprPlan, ResidentPlan
    from roofsim.predict import predict
    from roofsim.sim import simulate
    from roofsim.workload import Workload

    gpu, host, model = load_gpu("h100-sxm"), load_host("sapphire-rapids"), load_model("llama-3-8b")
    rt = gpu.runtime.model_copy(update={"step_us": Sourced(value=3000, measured="test")})
    slow = gpu.model_copy(update={"runtime": rt})
    work = Workload(context=32768, gen=2)
    plans = (
        ResidentPlan(prefill_chunk=8192, decode_graphs=False),
        HeadOffloadPlan(prefill_chunk=8192),
        KvprPlan(prefill_chunk=8192, overlap="inter_layer"),
        CpuAttentionPlan(cpu_kv_heads=2, prefill_chunk=8192),
    )
    for plan in plans:
        a, b = predict(plan, model, gpu, host, work), predict(plan, model, slow, host, work)
        assert b.summary.decode.time_s - a.summary.decode.time_s == pytest.approx(0.003, rel=1e-6)
        sa = simulate(plan, model, gpu, host, work, keep="all")
        sb = simulate(plan, model, slow, host, work, keep="all")
        grew = sb.summary.decode.step_s[0] - sa.summary.decode.step_s[0]
        assert 0.0029 < grew < 0.0031, plan.family
        if plan.family == "resident":
            # replayed from a CUDA graph, the step has no preamble of its own: the replay is its host part
            graphed = plan.model_copy(update={"decode_graphs": True})
            assert predict(graphed, model, slow, host, work).summary.decode.time_s == pytest.approx(
                predict(graphed, model, gpu, host, work).summary.decode.time_s
            )
            continue
        step0 = [s for s in sb.spans if s.phase == "decode" and s.step == 0]
        t0 = min(s.start_s for s in step0)
        first_copy = min(s.start_s for s in step0 if s.resource == "h2d")
        pre0 = min(s.start_s for s in step0 if s.name == "pre_attention" and s.layer == 0)
        assert first_copy - t0 >= 0.003 and first_copy >= pre0
    m = probe_measurements()
    m.tiny_step_s = 0.002
    f = fit(gpu, m)
    kernel_us = f["efficiency"]["kernel_us"][0]
    tiny = m.tiny_layer_model
    outside = sum(op.kernels for op in ops.embed_ops(tiny, 1, 1) + ops.head_ops(tiny, 1))
    assert f["runtime"]["step_us"][0] == pytest.approx(2000 - outside * kernel_us)
    m.tiny_step_s = None
    assert "step_us" not in fit(gpu, m)["runtime"]


def test_cpu_attention_rate_by_group_is_written_and_prices_each_model_at_its_group(tmp_path):
    """The CPU attention kernel measured per query heads per KV head lands in the host profile; a model whose group
    ran slower (MHA's single query row, as the H100 host measured for l2-planner-32k-24gb) gets a longer CPU scan,
    the calibration model's group keeps the measured rate, and groups between measured ones interpolate."""
    n = 2**27
    rates = {1: 10e9, 4: 25e9, 8: 20e9}
    m = probe_measurements().model_copy(
        update={
            "cpu_attention_groups": {g: CopyPoint(nbytes=n, seconds=n / r) for g, r in rates.items()},
            "cpu_attention_group": 4,
        }
    )
    spec, host = load_gpu("h100-sxm"), load_host("sapphire-rapids")
    gpu_path, _ = write_profile(spec, host, m, tmp_path)
    cal = default_host_of(str(gpu_path), load_gpu(str(gpu_path)))
    assert cal.cpu_attention_group.value == 4 and cal.cpu_attention_group_gbps[1].value == pytest.approx(10)
    at = {g: cal.cpu_attention_s(n, group=g) for g in (1, 4, 6, 8, 16)}
    assert at[4] == pytest.approx(cal.cpu_attention_s(n))  # the measured group: the rate as fitted
    assert at[1] == pytest.approx(2.5 * at[4])
    assert at[6] == pytest.approx(at[4] * 25 / 22.5)  # halfway from 25 to 20 GB/s
    assert at[16] == pytest.approx(at[8])  # flat beyond the last measured group
    assert host.cpu_attention_s(n, group=1) == host.cpu_attention_s(n)  # no table: one rate for all


def test_a_group_table_without_its_reference_group_is_refused():
    from pydantic import ValidationError

    host = load_host("sapphire-rapids")
    data = host.model_dump() | {"cpu_attention_group_gbps": {1: {"value": 10.0, "measured": "test"}}}
    with pytest.raises(ValidationError, match="go together"):
        type(host).model_validate(data)


def _slot_profile(tmp_path, rates: dict[int, dict[int, dict[int, float]]]):
    m = probe_measurements().model_copy(
        update={
            "cpu_attention_slots": {
                g: {
                    h: [CopyPoint(nbytes=n, seconds=n / r) for n, r in row.items()]
                    for h, row in by_heads.items()
                }
                for g, by_heads in rates.items()
            },
        }
    )
    gpu_path, _ = write_profile(load_gpu("h100-sxm"), load_host("sapphire-rapids"), m, tmp_path)
    return default_host_of(str(gpu_path), load_gpu(str(gpu_path)))


def test_cpu_attention_per_slot_prices_each_call_at_its_group_heads_and_length(tmp_path):
    """The scan rate of one CPU slot's block, measured by GQA group, KV heads and length, lands in the host profile
    and prices a layer's CPU attention per slot: one-head slots at their own (slower) rate, lengths between measured
    ones in log bytes, heads and groups between measured ones linearly, flat beyond the table; `calls` slots of the
    same bytes each cost their bytes at one slot's rate (the calls run one after another)."""
    four = {1: {2**24: 10e9, 2**26: 20e9}, 4: {2**26: 40e9, 2**28: 40e9}}
    one = {1: {2**24: 5e9, 2**26: 5e9}, 4: {2**26: 60e9}}
    cal = _slot_profile(tmp_path, {4: four, 1: one})
    assert cal.cpu_attention_slot_gbps[4][1][2**24].value == pytest.approx(10)
    assert cal.cpu_attention_s(6 * 2**24, calls=6, heads=1, group=4) == pytest.approx(6 * 2**24 / 10e9)
    assert cal.cpu_attention_s(2**25, heads=1, group=4) == pytest.approx(2**25 / 15e9)  # halfway in log bytes
    assert cal.cpu_attention_s(2**30, heads=1, group=4) == pytest.approx(2**30 / 20e9)  # flat beyond
    assert cal.cpu_attention_s(2**26, heads=2, group=4) == pytest.approx(2**26 / (20e9 + 20e9 / 3))
    assert cal.cpu_attention_s(2**26, heads=16, group=4) == pytest.approx(2**26 / 40e9)
    assert cal.cpu_attention_s(2**26, heads=1, group=1) == pytest.approx(2**26 / 5e9)  # MHA's own rate
    assert cal.cpu_attention_s(2**26, heads=1, group=2) == pytest.approx(2**26 / (5e9 + 15e9 / 3))
    assert cal.cpu_attention_s(2**26, heads=1, group=8) == pytest.approx(2**26 / 20e9)  # flat beyond group 4
    # without heads: the single rate, as before
    assert cal.cpu_attention_s(2**26, group=4) == pytest.approx(cal.cpu_attention_s(2**26))


def test_an_empty_slot_table_is_refused():
    from pydantic import ValidationError

    host = load_host("sapphire-rapids")
    data = host.model_dump() | {"cpu_attention_slot_gbps": {4: {1: {}}}}
    with pytest.raises(ValidationError, match="cpu_attention_slot_gbps"):
        type(host).model_validate(data)


def test_issue_beside_the_cpu_worker_is_the_ratio_of_the_tiny_layers(tmp_path):
    """The tiny decode layers timed while the CPU worker scans, over the same alone, land in the profile as the
    runtime's issue_beside_cpu; a calibration that did not time it leaves it out (the idle host's rate)."""
    spec, host = load_gpu("h100-sxm"), load_host("sapphire-rapids")
    m = probe_measurements()
    assert load_gpu(str(write_profile(spec, host, m, tmp_path / "a")[0])).runtime.issue_beside_cpu is None
    slow = m.model_copy(update={"tiny_layer_beside_cpu_s": 1.6 * m.tiny_layer_s})
    profile = load_gpu(str(write_profile(spec, host, slow, tmp_path / "b")[0]))
    assert profile.runtime.issue_beside_cpu.value == pytest.approx(1.6)
    beside = profile.beside_cpu_worker()
    assert beside.kernel_s == pytest.approx(1.6 * profile.kernel_s)
    assert beside.runtime.copy_issue_us.value == pytest.approx(1.6 * profile.runtime.copy_issue_us.value)
    assert beside.runtime.sync_us.value == profile.runtime.sync_us.value  # a wait, not dispatch
    assert beside.link == profile.link and beside.efficiency.gemm == profile.efficiency.gemm


def test_host_pace_prices_host_costs_in_proportion_and_leaves_the_gpu_alone(tmp_path):
    """The host-pace loop timed beside the tiny timings lands in the profile as their mean; at a run's pace the
    host-side costs scale by the ratio of the paces, GPU-side costs, copies and the CPU's do not, and a resident
    decode step a host at half speed drives is predicted slower (never faster) with the same GPU work."""
    from roofsim.families import ResidentPlan
    from roofsim.limits import Limits
    from roofsim.sim import simulate
    from roofsim.workload import Workload

    spec, host = load_gpu("h100-sxm"), load_host("sapphire-rapids")
    m = probe_measurements()
    assert load_gpu(str(write_profile(spec, host, m, tmp_path / "a")[0])).runtime.host_pace_us is None
    paced = m.model_copy(update={"host_pace_us": [800.0, 1200.0, 1000.0]})
    profile = load_gpu(str(write_profile(spec, host, paced, tmp_path / "b")[0]))
    assert profile.runtime.host_pace_us.value == pytest.approx(1000.0)
    assert profile.at_host_pace(None) is profile and profile.at_host_pace(1000.0).kernel_s == profile.kernel_s
    slow = profile.at_host_pace(2000.0)
    assert slow.kernel_s == pytest.approx(2 * profile.kernel_s)
    for name in ("copy_issue_us", "attention_call_us", "streamed_call_us", "step_us"):
        if getattr(profile.runtime, name) is not None:
            assert getattr(slow.runtime, name).value == pytest.approx(
                2 * getattr(profile.runtime, name).value
            )
    assert slow.runtime.sync_us == profile.runtime.sync_us and slow.link == profile.link
    assert slow.efficiency.gemm == profile.efficiency.gemm and slow.memory == profile.memory
    assert spec.at_host_pace(2000.0) is spec  # a profile that never timed the loop is priced as it is
    model, work = load_model("llama-3-8b"), Workload(context=4096, gen=4)
    steps = [
        simulate(ResidentPlan(), model, g, host, work, Limits()).summary.decode_s_per_token
        for g in (profile.at_host_pace(500.0), profile, slow)
    ]
    assert steps[0] <= steps[1] <= steps[2] and steps[2] > steps[1]


def test_the_launch_gauge_joins_the_loop_where_both_sides_timed_it(tmp_path):
    """With the launch pace timed beside the loop, a run's host is priced at the mean of the two gauges' ratios;
    without a launch figure on either side (older profiles and runs) the loop's ratio alone, as before."""
    spec, host = load_gpu("h100-sxm"), load_host("sapphire-rapids")
    paced = probe_measurements().model_copy(
        update={"host_pace_us": [1000.0], "launch_pace_us": [2000.0, 2400.0]}
    )
    profile = load_gpu(str(write_profile(spec, host, paced, tmp_path / "b")[0]))
    assert profile.runtime.launch_pace_us.value == pytest.approx(2200.0)
    assert profile.host_pace_ratio(1500.0) == pytest.approx(1.5)
    assert profile.host_pace_ratio(1500.0, 2200.0) == pytest.approx(1.25)
    assert profile.host_pace_ratio(None, 2200.0) is None and profile.at_host_pace(None, 4400.0) is profile
    assert profile.at_host_pace(1000.0, 4400.0).kernel_s == pytest.approx(1.5 * profile.kernel_s)
    stepped = load_gpu(
        str(
            write_profile(
                spec, host, paced.model_copy(update={"step_pace_us": [300.0, 500.0]}), tmp_path / "s"
            )[0]
        )
    )
    assert stepped.runtime.step_pace_us.value == pytest.approx(
        400.0
    )  # the tiny step on both sides: its ratio
    assert stepped.host_pace_ratio(1500.0, 2200.0, 1200.0) == pytest.approx(3.0)
    assert stepped.host_pace_ratio(1500.0, 2200.0) == pytest.approx(1.25) and profile.host_pace_ratio(
        1500.0, 2200.0, 1200.0
    ) == pytest.approx(1.25)
    loop_only = load_gpu(
        str(write_profile(spec, host, paced.model_copy(update={"launch_pace_us": None}), tmp_path / "c")[0])
    )
    assert loop_only.runtime.launch_pace_us is None and loop_only.host_pace_ratio(
        1500.0, 4400.0
    ) == pytest.approx(1.5)


def test_each_cost_is_restated_from_its_own_host_pace_to_the_layers(tmp_path):
    """Where the host slowed down while the attention calls were timed, the profile states the calls at the
    layers' pace: the reference readings are the gauges' means beside the tiny layers, each layer sample is
    divided by its own samples' ratio, and the calls by theirs (the mean of the loop's and the launches'). Files
    without labels hold measure()'s fixed order of 80 samples; any other unlabelled count keeps one mean."""
    from roofsim.calibration import PACE_LAYOUT, host_paces

    spec, host = load_gpu("h100-sxm"), load_host("sapphire-rapids")
    t = 150e-6
    base = probe_measurements().model_copy(
        update={"tiny_layer_samples_s": [t, 2 * t, t], "attention_call_s": 300e-6, "streamed_call_s": 600e-6}
    )
    level = {"layer0": 1.0, "layer1": 2.0, "calls": 3.0, "layer2": 1.0}  # the host's slowness beside each
    loop = [1000.0 * level[lab] for lab in PACE_LAYOUT]
    launch = [2000.0 * level[lab] for lab in PACE_LAYOUT]
    m = base.model_copy(update={"host_pace_us": loop, "launch_pace_us": launch})
    labelled = m.model_copy(update={"pace_beside": list(PACE_LAYOUT)})
    refs, ratios = host_paces(m)
    loop_ref = refs["loop"]
    assert refs == {"loop": pytest.approx(4000 / 3), "launch": pytest.approx(8000 / 3)}
    assert ratios["calls"] == pytest.approx(3000 / loop_ref) and host_paces(labelled) == host_paces(m)
    profile = load_gpu(str(write_profile(spec, host, m, tmp_path / "p")[0]))
    flat = load_gpu(
        str(
            write_profile(
                spec, host, base.model_copy(update={"tiny_layer_samples_s": [t] * 3}), tmp_path / "f"
            )[0]
        )
    )
    # every layer sample restated at the reference is t * 4/3: kernel_us 4/3 of a flat host's at t
    assert profile.kernel_s == pytest.approx(flat.kernel_s * 4 / 3)
    assert profile.runtime.attention_call_us.value == pytest.approx(300.0 / ratios["calls"])
    assert profile.runtime.streamed_call_us.value == pytest.approx(600.0 / ratios["calls"])
    assert profile.runtime.host_pace_us.value == pytest.approx(loop_ref)
    odd = m.model_copy(update={"host_pace_us": loop[:79], "launch_pace_us": launch[:79]})
    assert host_paces(odd)[1] == {} and host_paces(odd)[0]["loop"] == pytest.approx(sum(loop[:79]) / 79)


def test_a_measured_gathered_stage_rate_lands_in_the_link_with_its_control(tmp_path):
    """The copy of rows the CPU has just gathered is written as link.h2d_gathered_gbps, the control named in
    its provenance; without the measurement the field stays absent (copies at h2d_gbps)."""
    spec, host = load_gpu("h100-sxm"), load_host("sapphire-rapids")
    m = probe_measurements()
    assert load_gpu(str(write_profile(spec, host, m, tmp_path / "a")[0])).link.h2d_gathered_gbps is None
    with_it = m.model_copy(update={"h2d_after_gather_gbps": 42.0, "h2d_stage_again_gbps": 51.5})
    link = load_gpu(str(write_profile(spec, host, with_it, tmp_path / "b")[0])).link
    assert (
        link.h2d_gathered_gbps.value == pytest.approx(42.0) and "51.5 GB/s" in link.h2d_gathered_gbps.measured
    )


def test_tiny_layer_samples_price_kernels_at_their_mean_and_the_beside_ratio_at_the_last(tmp_path):
    """With the tiny layer sampled at the start, the middle and the end, the kernel cost is priced at the samples'
    mean (a decode step pays the host's mean speed) and the beside-the-worker ratio against the last sample, which
    was taken right after it; the figure in tiny_layer_s is not used then."""
    spec, host = load_gpu("h100-sxm"), load_host("sapphire-rapids")
    m = probe_measurements()
    t = m.tiny_layer_s
    one = load_gpu(str(write_profile(spec, host, m, tmp_path / "one")[0]))
    sampled = m.model_copy(
        update={
            "tiny_layer_samples_s": [t, 2 * t, 3 * t],
            "tiny_layer_s": t,
            "tiny_layer_beside_cpu_s": 4.5 * t,
        }
    )
    profile = load_gpu(str(write_profile(spec, host, sampled, tmp_path / "three")[0]))
    assert profile.kernel_s == pytest.approx(2 * one.kernel_s)
    assert profile.runtime.issue_beside_cpu.value == pytest.approx(1.5)


def test_elementwise_kernels_fit_their_own_bandwidth_and_price_vector_operators_only(tmp_path):
    """A layer's elementwise kernels timed at a prefill chunk, each with the bytes the operator model counts, give
    the profile a vector efficiency (bytes / time / datasheet bandwidth); roofline prices "vector" operators at it
    and GEMMs as before, and a calibration without them keeps the copy's efficiency for both."""
    from roofsim import ops
    from roofsim.roofline import op_time

    spec, host = load_gpu("h100-sxm"), load_host("sapphire-rapids")
    bw = spec.memory.bandwidth_gbps.value * 1e9
    m = probe_measurements().model_copy(
        update={
            "vector_ops": [
                CopyPoint(nbytes=2**30, seconds=2**30 / (0.5 * bw)),
                CopyPoint(nbytes=2**29, seconds=2**29 / (0.5 * bw)),
            ]
        }
    )
    profile = load_gpu(str(write_profile(spec, host, m, tmp_path)[0]))
    assert profile.efficiency.vector.value == pytest.approx(0.5)
    assert profile.vector_bytes_per_s == pytest.approx(0.5 * bw)
    model = load_model("llama-3-8b")
    post = {op.name: op for op in ops.post_attention_ops(model, 16384, 1)}
    act = op_time(post["act_mul"], profile)
    assert float(act.hbm_s) == pytest.approx(float(post["act_mul"].hbm_bytes) / (0.5 * bw))
    plain = load_gpu(str(write_profile(spec, host, probe_measurements(), tmp_path / "plain")[0]))
    assert plain.efficiency.vector is None and plain.vector_bytes_per_s == plain.hbm_bytes_per_s
    assert float(op_time(post["down_proj"], profile).total_s) == pytest.approx(
        float(op_time(post["down_proj"], plain).total_s)
    )


def test_short_prefill_calls_give_an_efficiency_by_query_rows_that_prices_short_chunks_only(tmp_path):
    """Chunk-after-a-past calls measured at few query rows land as efficiency.attention_rows; a profile whose
    short calls ran at half the rate makes a 2048-token chunked prefill of one-head slots slower, in both models,
    and leaves decode and the scalar efficiency alone. Without short points (the committed measurements) no table
    is written."""
    from roofsim.families import HeadOffloadPlan
    from roofsim.predict import predict
    from roofsim.sim import simulate
    from roofsim.workload import Workload

    spec, host, model = load_gpu("h100-sxm"), load_host("sapphire-rapids"), load_model("llama-3-8b")
    att = PROBE["attention"]["prefill_L32768"]
    rate = att["tflops"] * 1e12

    def point(rows, share):
        return FlopPoint(label=f"{rows} rows", flops=rate * share * 1e-3, seconds=1e-3, rows=rows)

    base = probe_measurements()
    assert "attention_rows" not in fit(spec, base)["efficiency"]
    out = {}
    for share in (1.0, 0.5):
        m = base.model_copy(
            update={
                "attention_prefill": [point(32768, 1.0), point(262144, 1.0)],
                "attention_prefill_short": [point(8192, share), point(16384, (1 + share) / 2)],
                "cpu_scan_gap_s": 2e-3,
            }
        )
        profile = load_gpu(str(write_profile(spec, host, m, tmp_path / f"{share}")[0]))
        table = profile.efficiency.attention_rows
        assert sorted(table) == [8192, 16384, 32768, 262144]
        assert profile.efficiency.attention.value == pytest.approx(
            rate / (spec.compute.bf16_tflops.value * 1e12)
        )
        # held at the ends, interpolated between, the scalar where a call has no rows (decode)
        assert profile.attention_flops_at(1000) == pytest.approx(profile.attention_flops_at(8192))
        assert profile.attention_flops_at(0) == profile.attention_flops
        plan = HeadOffloadPlan(kv_heads_per_slot=1, resident_slots=4, prefill_chunk=2048)
        work = Workload(context=32768, gen=4)
        analytic = predict(plan, model, profile, host, work)
        sim = simulate(plan, model, profile, host, work, keep="none")
        out[share] = (analytic.summary.prefill_s, sim.summary.prefill_s, analytic.summary.decode_s_per_token)
    assert out[0.5][0] > out[1.0][0] * 1.05
    assert out[0.5][1] > out[1.0][1] * 1.05
    assert out[0.5][2] == pytest.approx(out[1.0][2], rel=1e-9)


def test_an_empty_attention_rows_table_is_refused():
    spec = load_gpu("h100-sxm")
    data = spec.model_dump()
    data["efficiency"]["attention_rows"] = {}
    with pytest.raises(ValueError, match="attention_rows"):
        type(spec).model_validate(data)


def test_head_dim_calls_give_ratios_that_price_each_models_prefill_attention_at_its_head_dim(tmp_path):
    """Calls timed at several head dims land as efficiency.attention_head_dim, FLOP/s over the calibration
    model's head dim's; a profile where head dim 96 runs at 0.7 of 128's rate makes Phi-3-mini's (96) prefill
    slower and leaves Llama-3-8B's (128) to the digit, and decode (memory-bound) of both nearly alone. Older
    measurements (no head-dim calls) write no table and price every head dim the same."""
    from roofsim.families import ResidentPlan
    from roofsim.predict import predict
    from roofsim.workload import Workload

    spec, host = load_gpu("h100-sxm"), load_host("sapphire-rapids")
    base = probe_measurements()
    assert "attention_head_dim" not in fit(spec, base)["efficiency"]

    def point(d, flops_per_s):
        return FlopPoint(label=f"d {d}", flops=flops_per_s * 1e-3, seconds=1e-3)

    m = base.model_copy(
        update={
            "attention_head_dims": {64: point(64, 0.5e15), 96: point(96, 0.35e15), 128: point(128, 0.5e15)},
            "attention_head_dim_at": 128,
            "cpu_scan_gap_s": 2e-3,
        }
    )
    ratios = fit(spec, m)["efficiency"]["attention_head_dim"][0]
    assert ratios == pytest.approx({64: 1.0, 96: 0.7, 128: 1.0})
    profile = load_gpu(str(write_profile(spec, host, m, tmp_path / "dims")[0]))
    plain = load_gpu(
        str(write_profile(spec, host, base.model_copy(update={"cpu_scan_gap_s": 2e-3}), tmp_path / "p")[0])
    )
    assert profile.efficiency.head_dim_ratio(96) == pytest.approx(0.7)
    assert profile.efficiency.head_dim_ratio(112) == pytest.approx(0.85)  # between two timed dims
    assert profile.efficiency.head_dim_ratio(256) == pytest.approx(1.0)  # held at the end
    assert profile.attention_flops_at(0, 96) == pytest.approx(0.7 * profile.attention_flops_at(0))
    work = Workload(context=32768, gen=4)
    for name, slower in (("phi-3-mini-128k", True), ("llama-3-8b", False)):
        model = load_model(name)
        a = predict(ResidentPlan(), model, profile, host, work).summary
        b = predict(ResidentPlan(), model, plain, host, work).summary
        if slower:
            assert a.prefill_s > b.prefill_s * 1.03, name
        else:
            assert a.prefill_s == pytest.approx(b.prefill_s, rel=1e-12), name
        assert a.decode_s_per_token == pytest.approx(b.decode_s_per_token, rel=0.01), name


def test_a_head_dim_table_with_a_ratio_out_of_bounds_is_refused():
    spec = load_gpu("h100-sxm")
    data = spec.model_dump()
    data["efficiency"]["attention_head_dim"] = {96: {"value": 0.0, "measured": "x"}}
    with pytest.raises(ValueError, match="attention_head_dim"):
        type(spec).model_validate(data)


def test_a_measured_worker_round_trip_lands_in_the_profile_and_slows_cpu_attention_decode_only(tmp_path):
    """worker_round_trip_s lands as runtime.worker_round_trip_us; a dear one lengthens every layer's CPU part in
    both models, so a cpu_attention plan whose decode the CPU path binds slows by about a round trip per layer,
    and head_offload (no worker) is unchanged."""
    from roofsim.families import CpuAttentionPlan, HeadOffloadPlan
    from roofsim.predict import predict
    from roofsim.sim import simulate
    from roofsim.workload import Workload

    spec, host, model = load_gpu("h100-sxm"), load_host("sapphire-rapids"), load_model("llama-3-8b")
    m = probe_measurements().model_copy(update={"cpu_scan_gap_s": 2e-3})
    plain = load_gpu(str(write_profile(spec, host, m, tmp_path / "plain")[0]))
    assert plain.runtime.worker_round_trip_us is None
    dear = load_gpu(
        str(
            write_profile(spec, host, m.model_copy(update={"worker_round_trip_s": 2e-3}), tmp_path / "dear")[
                0
            ]
        )
    )
    assert dear.runtime.worker_round_trip_us.value == pytest.approx(2000.0)
    work = Workload(context=32768, gen=2)
    cpu = CpuAttentionPlan(cpu_kv_heads=8, prefill_chunk=8192)  # every head on the CPU: its path binds
    rt = 2e-3 * model.n_layers
    for plan, extra in ((cpu, rt), (HeadOffloadPlan(prefill_chunk=8192), 0.0)):
        a0, a1 = predict(plan, model, plain, host, work), predict(plan, model, dear, host, work)
        s0 = simulate(plan, model, plain, host, work, keep="none").summary
        s1 = simulate(plan, model, dear, host, work, keep="none").summary
        assert a1.summary.decode_s_per_token - a0.summary.decode_s_per_token == pytest.approx(
            extra, rel=0.2, abs=1e-6
        )
        assert s1.decode_s_per_token - s0.decode_s_per_token == pytest.approx(extra, rel=0.2, abs=1e-6)
        assert s1.prefill_s == pytest.approx(s0.prefill_s)


def test_link_rate_is_the_slope_and_the_latency_never_negative():
    """A cost per large copy (one H100 guest's 64 MiB, 256 MiB, 1 GiB at 27, 42, 52 GB/s) does not lower the
    streaming rate: fit takes the slope between the largest copies, and the latency fitted against it is not
    negative (a profile with a negative one does not load)."""
    m = probe_measurements()
    MiB = 2**20
    big = [
        CopyPoint(nbytes=n * MiB, seconds=t) for n, t in ((64, 2.514e-3), (256, 6.383e-3), (1024, 20.567e-3))
    ]
    small = [
        CopyPoint(nbytes=n, seconds=t)
        for n, t in ((262144, 11.4e-6), (4 * MiB, 86.1e-6), (16 * MiB, 319.9e-6))
    ]
    m = m.model_copy(update={"h2d": small + big})
    link = fit(load_gpu("h100-sxm"), m)["link"]
    assert link["h2d_gbps"][0] == pytest.approx(960 * MiB / (20.567e-3 - 2.514e-3) / 1e9, rel=1e-6)
    assert link["h2d_gbps"][0] > max(p.nbytes / p.seconds for p in big) / 1e9
    assert link["copy_latency_us"][0] >= 0.0


def test_measured_fp8_passes_and_call_cost_price_fp8_attention_only(tmp_path):
    """A decode call's fp8 store passes timed with the bytes the operator model counts give the profile an fp8
    pass efficiency, and the tiny steps' fp8 extra per call a host cost: fp8 attention's GPU time is its bf16
    part plus the counted fp8 bytes at that efficiency, its host dispatch the measured extra in place of the
    counted dispatches; bf16 attention prices as before, and a calibration without them keeps the HBM rate and
    the counted dispatches."""
    from roofsim import kvformat, ops
    from roofsim.roofline import op_time, work

    spec, host = load_gpu("h100-sxm"), load_host("sapphire-rapids")
    bw = spec.memory.bandwidth_gbps.value * 1e9
    m = probe_measurements().model_copy(
        update={
            "fp8_passes": [CopyPoint(nbytes=2**28, seconds=2**28 / (0.3 * bw))],
            "fp8_call_s": 40e-6,
        }
    )
    profile = load_gpu(str(write_profile(spec, host, m, tmp_path)[0]))
    plain = load_gpu(str(write_profile(spec, host, probe_measurements(), tmp_path / "plain")[0]))
    assert profile.efficiency.fp8_passes.value == pytest.approx(0.3)
    assert profile.runtime.fp8_call_us.value == pytest.approx(40.0)
    assert plain.efficiency.fp8_passes is None and plain.runtime.fp8_call_us is None
    assert plain.fp8_bytes_per_s == plain.hbm_bytes_per_s
    model = load_model("llama-3-8b")
    fp8 = ops.attention_op(model, 1, 65536, 1, calls=8, kv_dtype="fp8_e4m3")
    bf16 = ops.attention_op(model, 1, 65536, 1, calls=8)
    assert float(fp8.fp8_bytes) > 0 and float(fp8.fp8_calls) == 8 and float(bf16.fp8_bytes) == 0
    gpu_s = float(op_time(fp8, profile).hbm_s) - float(op_time(bf16, profile).hbm_s)
    assert gpu_s == pytest.approx((float(fp8.fp8_bytes) + float(fp8.fp8_write_bytes)) / (0.3 * bw))
    assert float(op_time(bf16, profile).total_s) == pytest.approx(float(op_time(bf16, plain).total_s))
    host_extra = float(work([fp8], profile).dispatch_s(profile) - work([bf16], profile).dispatch_s(profile))
    assert host_extra == pytest.approx(8 * 40e-6)
    counted = float(work([fp8], plain).dispatch_s(plain) - work([bf16], plain).dispatch_s(plain))
    assert counted == pytest.approx(8 * (kvformat.DEQUANT_KERNELS + kvformat.QUANT_KERNELS) * plain.kernel_s)


def test_measured_expert_call_cost_prices_each_expert_hit(tmp_path):
    """The tiny expert loop's host time per expert hit gives the profile runtime.expert_call_us, which replaces
    the counted dispatches of each hit expert (ops.EXPERT_KERNELS at kernel_us) in a MoE layer's host dispatch;
    a dense layer's dispatch does not change, and a calibration without it keeps the counted dispatches."""
    from roofsim import ops
    from roofsim.roofline import work

    spec, host = load_gpu("h100-sxm"), load_host("sapphire-rapids")
    profile = load_gpu(
        str(
            write_profile(
                spec, host, probe_measurements().model_copy(update={"expert_call_s": 250e-6}), tmp_path
            )[0]
        )
    )
    plain = load_gpu(str(write_profile(spec, host, probe_measurements(), tmp_path / "plain")[0]))
    assert profile.runtime.expert_call_us.value == pytest.approx(250.0)
    assert plain.runtime.expert_call_us is None
    moe = ops.moe_ops(load_model("qwen3-30b-a3b"), 1)  # one decode token: its 8 experts hit
    hit = sum(float(op.expert_calls) for op in moe)
    assert hit == pytest.approx(8.0)
    measured, counted = (
        float(work(moe, profile).dispatch_s(profile)),
        float(work(moe, plain).dispatch_s(plain)),
    )
    assert measured - counted == pytest.approx(hit * (250e-6 - ops.EXPERT_KERNELS * plain.kernel_s))
    dense = ops.post_attention_ops(load_model("llama-3-8b"), 1, 1)
    assert float(work(dense, profile).dispatch_s(profile)) == pytest.approx(
        float(work(dense, plain).dispatch_s(plain))
    )


def test_measured_expert_fetch_cost_gives_the_profile_its_fetch(tmp_path):
    """The tiny streamed expert loop's time per expert hit beyond the resident loop's gives the profile
    runtime.expert_fetch_us; a calibration without it has none (the fetch's copies then issue at copy_issue_us)."""
    spec, host = load_gpu("h100-sxm"), load_host("sapphire-rapids")
    measured = probe_measurements().model_copy(update={"expert_fetch_s": 40e-6})
    profile = load_gpu(str(write_profile(spec, host, measured, tmp_path)[0]))
    plain = load_gpu(str(write_profile(spec, host, probe_measurements(), tmp_path / "plain")[0]))
    assert profile.runtime.expert_fetch_us.value == pytest.approx(40.0)
    assert plain.runtime.expert_fetch_us is None


def test_a_timed_moe_layer_gives_the_profile_what_its_count_misses(tmp_path):
    """A MoE decoder layer timed at a real width becomes runtime.moe_layer_us, the measured layer less the price
    the profile's counts give it; priced with it, that layer's decode step costs what was measured (at the same
    host pace), and a dense layer costs what it did. A layer measured cheaper than its price adds nothing."""
    from roofsim import ops
    from roofsim.calibration import MOE_LAYER_PAST
    from roofsim.roofline import work

    spec, host = load_gpu("h100-sxm"), load_host("sapphire-rapids")
    layer = load_model("qwen3-30b-a3b").model_copy(update={"n_layers": 1, "vocab": 128})
    base = probe_measurements().model_copy(update={"expert_call_s": 100e-6, "moe_layer_model": layer})
    plain = load_gpu(str(write_profile(spec, host, base, tmp_path / "plain")[0]))
    assert plain.runtime.moe_layer_us is None

    def host_s(gpu, model):
        ops_ = ops.layer_ops(model, 1, MOE_LAYER_PAST, 1)
        syncs = model.moe_layers / model.n_layers
        return float(work(ops_, gpu).dispatch_s(gpu)) + syncs * gpu.runtime.sync_us.value * 1e-6

    priced = host_s(plain, layer)
    measured = base.model_copy(update={"moe_layer_s": priced + 1.2e-3})
    profile = load_gpu(str(write_profile(spec, host, measured, tmp_path / "moe")[0]))
    assert profile.runtime.moe_layer_us.value == pytest.approx(1200.0, rel=1e-6)
    assert host_s(profile, layer) == pytest.approx(priced + 1.2e-3, rel=1e-6)
    dense = load_model("llama-3-8b")
    assert host_s(profile, dense) == pytest.approx(host_s(plain, dense))

    cheaper = base.model_copy(update={"moe_layer_s": priced / 2})
    below = load_gpu(str(write_profile(spec, host, cheaper, tmp_path / "below")[0]))
    assert below.runtime.moe_layer_us.value == 0.0


def test_decode_gemvs_fit_a_line_that_prices_memory_bound_gemms_only(tmp_path):
    """One token's GEMVs timed at several weight sizes fit a line: its slope is efficiency.gemv (a share of the
    datasheet bandwidth) and its intercept gemv_us. A memory-bound GEMM (a decode token's projection) then costs
    its bytes at that rate plus the intercept beyond the kernel spacing every kernel pays; a compute-bound one (a
    prefill chunk's) is priced as before, and a calibration without the GEMVs prices both as before."""
    from roofsim import ops
    from roofsim.calibration import KernelPoint
    from roofsim.roofline import op_time

    spec, host = load_gpu("h100-sxm"), load_host("sapphire-rapids")
    bw = spec.memory.bandwidth_gbps.value * 1e9
    gemvs = [
        KernelPoint(label=f"decode w{n}", nbytes=n, seconds=5e-6 + n / (0.8 * bw))
        for n in (2**23, 2**25, 2**30)
    ]
    m = probe_measurements().model_copy(update={"decode_gemv": gemvs, "gpu_kernel_us": 2.0})
    fitted = fit(spec, m)["efficiency"]
    assert fitted["gemv"][0] == pytest.approx(0.8) and fitted["gemv_us"][0] == pytest.approx(5.0)
    profile = load_gpu(str(write_profile(spec, host, m, tmp_path)[0]))
    without = probe_measurements().model_copy(update={"gpu_kernel_us": 2.0})
    plain = load_gpu(str(write_profile(spec, host, without, tmp_path / "plain")[0]))
    assert plain.efficiency.gemv is None and plain.gemv_extra_s == 0.0
    model = load_model("llama-3-8b")
    decode = {op.name: op for op in ops.post_attention_ops(model, 1, 1)}["down_proj"]
    prefill = {op.name: op for op in ops.post_attention_ops(model, 16384, 1)}["down_proj"]
    t = op_time(decode, profile)
    assert float(t.hbm_s) == pytest.approx(float(decode.hbm_bytes) / (0.8 * bw) + 3e-6)
    assert float(t.total_s) > float(op_time(decode, plain).total_s)
    assert float(op_time(prefill, profile).total_s) == pytest.approx(float(op_time(prefill, plain).total_s))


def test_the_committed_profile_carries_the_gemv_line_its_measurements_give():
    """The development set's profile got its GEMV line after calibrate (validation/add_gemv.py): what the
    profile says is what gemv_fit gives from the measurements committed beside it."""
    from roofsim.calibration import gemv_fit
    from roofsim.jsonfile import read_json_object

    folder = Path(__file__).parent.parent / "validation/results/h100/s22"
    m = Measurements.model_validate(
        read_json_object(folder / "h100-sxm-calibrated-measurements.json", "measurements file")
    )
    profile = load_gpu(str(folder / "h100-sxm-calibrated.toml"))
    fitted = gemv_fit(m, profile)
    assert profile.efficiency.gemv.value == pytest.approx(fitted["gemv"][0], rel=1e-5)
    assert profile.efficiency.gemv_us.value == pytest.approx(fitted["gemv_us"][0], rel=1e-5)


def test_fp8_chunk_writes_fit_their_own_rate_and_price_the_write_bytes_only(tmp_path):
    """The fp8 store's write of prefill chunks, timed with the bytes the operator model counts, gives
    efficiency.fp8_write; an fp8 attention call's write bytes are priced at it and its dequantisation at
    fp8_passes, and without the timing the writes keep fp8_passes' rate."""
    from roofsim import ops
    from roofsim.roofline import op_time

    spec, host = load_gpu("h100-sxm"), load_host("sapphire-rapids")
    bw = spec.memory.bandwidth_gbps.value * 1e9
    passes = [CopyPoint(nbytes=2**28, seconds=2**28 / (0.2 * bw))]
    writes = [CopyPoint(nbytes=n, seconds=n / (0.5 * bw)) for n in (2**28, 2**30)]
    with_writes = probe_measurements().model_copy(update={"fp8_passes": passes, "fp8_writes": writes})
    profile = load_gpu(str(write_profile(spec, host, with_writes, tmp_path)[0]))
    plain_m = probe_measurements().model_copy(update={"fp8_passes": passes})
    plain = load_gpu(str(write_profile(spec, host, plain_m, tmp_path / "plain")[0]))
    assert profile.efficiency.fp8_write.value == pytest.approx(0.5) and plain.efficiency.fp8_write is None
    assert plain.fp8_write_bytes_per_s == plain.fp8_bytes_per_s
    model = load_model("llama-3-8b")
    op = ops.attention_op(model, 8192, 24576, 1, kv_dtype="fp8_e4m3")
    assert float(op.fp8_write_bytes) > 0 and float(op.fp8_bytes) > 0
    saved = float(op.fp8_write_bytes) * (1 / (0.2 * bw) - 1 / (0.5 * bw))
    got = float(op_time(op, plain).total_s) - float(op_time(op, profile).total_s)
    assert got == pytest.approx(saved)


def test_the_replayed_decode_kernel_line_prices_each_further_sequence_of_a_batch(tmp_path):
    """The replayed decode kernel timed over a layer's KV at several sizes fits a line whose intercept is
    efficiency.decode_call_us. A replayed decode step attends each sequence in a call of its own, so at batch B
    each global layer's attention costs B - 1 such intercepts more, in the analytic model and the simulator alike
    (the same difference), and nothing at batch 1 or where decode runs eager."""
    from roofsim.calibration import CopyPoint
    from roofsim.families import ResidentPlan
    from roofsim.predict import predict
    from roofsim.sim import simulate
    from roofsim.workload import Workload

    spec, host = load_gpu("h100-sxm"), load_host("sapphire-rapids")
    points = [CopyPoint(nbytes=n, seconds=20e-6 + n / 3e12) for n in (2**24, 2**27, 2**29)]
    m = probe_measurements().model_copy(update={"attention_decode_replay": points})
    assert fit(spec, m)["efficiency"]["decode_call_us"][0] == pytest.approx(20.0)
    profile = load_gpu(str(write_profile(spec, host, m, tmp_path)[0]))
    plain = load_gpu(str(write_profile(spec, host, probe_measurements(), tmp_path / "plain")[0]))
    assert plain.efficiency.decode_call_us is None
    model = load_model("llama-3-8b")

    def step(gpu, batch, graphs=True, sim=False):
        work = Workload(context=4096, batch=batch, gen=4)
        plan = ResidentPlan(prefill_chunk=4096, decode_graphs=graphs)
        t = simulate(plan, model, gpu, host, work) if sim else predict(plan, model, gpu, host, work)
        return t.summary.decode.time_s

    gap = (20e-6 - plain.decode_sequence_call_s) * 3 * model.n_layers  # batch 4: three calls more a layer
    for sim in (False, True):
        assert step(profile, 4, sim=sim) - step(plain, 4, sim=sim) == pytest.approx(gap, rel=0.02)
        assert step(profile, 1, sim=sim) == pytest.approx(step(plain, 1, sim=sim))
        assert step(profile, 4, graphs=False, sim=sim) == pytest.approx(step(plain, 4, graphs=False, sim=sim))
