"""executor/timing.py: what each host-clock timer puts inside its timing (on a virtual clock, so no assertion
depends on this machine's speed), the CUDA-event timer's idle device after a block, and the one fingerprint, which
both a measured trace and a calibration's measurements file hold."""

import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from roofsim.executor import timing  # noqa: E402

from roofsim.calibration import Measurements  # noqa: E402
from roofsim.trace import Fingerprint  # noqa: E402

RESULTS = Path(__file__).parent.parent / "validation" / "results" / "h100"
MEASUREMENTS = "h100-sxm-calibrated-measurements.json"


@pytest.fixture
def clock(monkeypatch):
    """A virtual host clock: time.perf_counter reads it, and only the calls below advance it (work 1, sync 10)."""
    now = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: now[0])

    def advance(by: float):
        def call():
            now[0] += by

        return call

    return advance(1.0), advance(10.0)


def test_issue_s_times_the_issue_and_leaves_both_syncs_outside(clock):
    work, sync = clock
    assert timing.issue_s(work, sync) == 1.0


def test_wall_s_times_the_call_to_its_completion(clock):
    work, sync = clock
    assert timing.wall_s(work, sync) == 11.0


def test_wall_time_s_is_the_median_call_after_an_untimed_one(monkeypatch):
    durations = iter([99.0, 3.0, 1.0, 2.0])  # the first call is the untimed one
    now = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: now[0])

    def work():
        now[0] += next(durations)

    assert timing.wall_time_s(work, repeat=3) == 2.0


def test_the_stopwatch_uses_the_host_clock_off_the_gpu(clock):
    work, _ = clock
    with timing.Stopwatch("cpu") as watch:
        work()
        work()
    assert watch.seconds == 2.0


def test_upper_median_is_a_measured_time():
    assert timing.upper_median([3.0, 1.0, 2.0]) == 2.0
    assert timing.upper_median([4.0, 1.0, 3.0, 2.0]) == 3.0


def test_the_fingerprint_is_the_trace_schema_and_fits_the_measurements_file():
    """One fingerprint: a measured trace holds it as roofsim.trace.Fingerprint, a calibration as the dict
    Measurements.fingerprint takes; both read back."""
    fp = timing.fingerprint(torch.device("cpu"))
    assert isinstance(fp, Fingerprint) and fp.torch == torch.__version__
    assert fp.cpu_threads == torch.get_num_threads() and fp.cpu_worker_threads >= 1
    assert Fingerprint.model_validate_json(fp.model_dump_json()) == fp
    committed = Measurements.model_validate_json((RESULTS / "s22" / MEASUREMENTS).read_text())
    stored = committed.model_copy(update={"fingerprint": fp.model_dump(exclude_none=True)})
    again = Measurements.model_validate_json(stored.model_dump_json())
    assert Fingerprint.model_validate(again.fingerprint) == fp


@pytest.mark.parametrize("folder", ["s22"])
def test_committed_measurements_still_read_and_their_fingerprint_fits_the_schema(folder):
    m = Measurements.model_validate_json((RESULTS / folder / MEASUREMENTS).read_text())
    assert Fingerprint.model_validate(m.fingerprint).gpu_name.startswith("NVIDIA H100")


@pytest.mark.gpu
def test_the_cuda_timers_leave_the_device_idle():
    """A CUDA-event timing ends with the device synchronised (the next one starts from an idle device), also
    behind a sleeping kernel; a copy's time is positive."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    x = torch.zeros(1 << 20, device="cuda")
    with timing.Stopwatch("cuda", sleep_cycles=timing.QUEUE_CYCLES) as watch:
        x.add_(1.0)
    assert torch.cuda.current_stream().query() and watch.seconds > 0
    host = torch.ones(1 << 20, dtype=torch.uint8, pin_memory=True)
    assert timing.copy_once_s(torch.empty_like(host, device="cuda"), host) > 0
    assert timing.cuda_time_s(lambda: x.mul_(1.0), repeat=3, warmup=1) > 0
