"""The command line's values and their combinations, checked before any work: a bad value or two options that
contradict each other is one line naming the option and the fix (the CLI turns UserError into it)."""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence

from roofsim.errors import UserError
from roofsim.limits import Limits
from roofsim.specs.hardware import GiB, GpuSpec
from roofsim.units import fmt_bytes, fmt_bytes_both, parse_bytes

MAX_BATCH = 65536
"""Sequences decoded together: 256 times vLLM's default cap (256)."""

MAX_TOP = 100
"""Plans `roofsim plan --top` refines with the simulator (each is a simulation of its own)."""

MAX_DECODE_STEPS = 4096
"""Decode steps `roofsim simulate` runs event by event (a minute at 1M tokens); the step repeats, so its time is
known well before this."""

MAX_PREFILL_CHUNKS = 16384
"""Prefill chunks `roofsim simulate` runs event by event (about a minute and a half on a laptop core)."""


def positive_int(value: int, what: str, most: int, unit: str) -> int:
    if not 0 < value <= most:
        raise UserError(f"{what} must be a whole number of {unit} from 1 to {most}, got {value}")
    return value


def limits(gpu_mem: str | None, host_mem: str | None, gpu: GpuSpec) -> Limits:
    """--gpu-mem and --host-mem. --gpu-mem caps the card: above the card's memory it would cap nothing, and at or
    below the spec's reserve it leaves nothing for the plan."""
    gpu_bytes = parse_bytes(gpu_mem, "--gpu-mem") if gpu_mem is not None else None
    if gpu_bytes is not None:
        card, reserved = gpu.capacity_bytes, gpu.memory.reserved_gib.value * GiB
        if gpu_bytes > card * (1 + 1e-9):
            raise UserError(
                f"--gpu-mem {gpu_mem} is {fmt_bytes_both(gpu_bytes)}, more than {gpu.name}'s {fmt_bytes(card)}: it only "
                "caps the card's memory; for a bigger card pass its spec with --gpu"
            )
        if gpu_bytes <= reserved:
            raise UserError(
                f"--gpu-mem {gpu_mem} is {fmt_bytes_both(gpu_bytes)}, no more than the {fmt_bytes(reserved)} that "
                f"{gpu.name}'s spec reserves (memory.reserved_gib): give a larger cap"
            )
    host_bytes = parse_bytes(host_mem, "--host-mem") if host_mem is not None else None
    return Limits(gpu_mem_bytes=gpu_bytes, host_mem_bytes=host_bytes)


def families(text: str | None, allow_approximate: bool, restrict: str | None) -> tuple[str, ...] | None:
    """--families: known names, approximate ones only with --allow-approximate, none beside --restrict."""
    from roofsim.families.registry import families as registered

    if text is None:
        return None
    if restrict:
        raise UserError(
            f"--restrict {restrict} searches its own shape of plan: drop --families or --restrict"
        )
    names = tuple(n.strip() for n in text.split(","))
    known = registered()
    for name in names:
        if not name:
            raise UserError(
                f"--families {text!r} has an empty name: give names separated by commas, e.g. kvpr,evict"
            )
        if name not in known:
            close = difflib.get_close_matches(name, list(known), n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise UserError(
                f"--families: unknown plan family {name!r}: {hint}families are {', '.join(known)}"
            )
        if known[name].approximate and not allow_approximate:
            raise UserError(
                f"--families {name} is an approximate family: add --allow-approximate to search it"
            )
    return names


def searched(name: str, allow_approximate: bool, restrict: str | None, names: Sequence[str] | None) -> bool:
    """Whether `roofsim plan` searches family `name` (an approximate one) with these options."""
    return allow_approximate and not restrict and (names is None or name in names)


def fetch_fraction(value: float | None, searched: bool) -> float | None:
    if value is None:
        return None
    if not (math.isfinite(value) and 0 < value <= 1):
        raise UserError(
            f"--fetch-fraction is the share of tokens sparse_fetch fetches, in (0, 1]; got {value}"
        )
    if not searched:
        raise UserError(
            "--fetch-fraction sets sparse_fetch's share, which this search leaves out: add --allow-approximate"
        )
    return value


def evict_budget(text: str | None, searched: bool) -> int | None:
    from roofsim.units import parse_tokens

    if text is None:
        return None
    budget = parse_tokens(text, "--evict-budget")
    if not searched:
        raise UserError(
            "--evict-budget sets evict's budget, which this search leaves out: add --allow-approximate"
        )
    return budget


def restrict(name: str | None, allow_approximate: bool) -> str | None:
    if name and allow_approximate:
        raise UserError(
            f"--restrict {name} searches its own shape of plan, none approximate: drop --allow-approximate"
        )
    return name


def top(value: int) -> int:
    if not 0 <= value <= MAX_TOP:
        raise UserError(
            f"--top is how many of the best plans the simulator refines, from 0 to {MAX_TOP}; got {value}"
        )
    return value


def simulation(plan, context: int, decode_steps: int, steps_given: bool) -> None:
    """`roofsim simulate` runs every prefill chunk and decode step event by event: bounded, with the fix."""
    if decode_steps > MAX_DECODE_STEPS:
        how = (
            "--decode-steps"
            if steps_given
            else f"--gen {decode_steps} (the decode steps simulated by default)"
        )
        raise UserError(
            f"{how} is over the {MAX_DECODE_STEPS} decode steps roofsim simulates: pass --decode-steps "
            f"{MAX_DECODE_STEPS} or fewer (every step repeats the same work)"
        )
    chunk = plan.prefill_chunk or context
    chunks = -(-context // chunk)
    if chunks > MAX_PREFILL_CHUNKS:
        raise UserError(
            f"prefill_chunk={chunk} makes {chunks} prefill chunks at this context, over the {MAX_PREFILL_CHUNKS} "
            f"roofsim simulates: give a plan with a prefill_chunk of at least {-(-context // MAX_PREFILL_CHUNKS)}"
        )


def timeout(value: float) -> float:
    if not (math.isfinite(value) and value > 0):
        raise UserError(f"--timeout is seconds per executor run, a positive number; got {value}")
    return value


KV_DTYPE_NAMES = {"bf16": "bf16", "fp8": "fp8_e4m3", "fp8_e4m3": "fp8_e4m3"}


def kv_dtype(text: str | None) -> str | None:
    """--kv-dtype: bf16, or fp8 (fp8_e4m3); None where not given."""
    if text is None:
        return None
    if text not in KV_DTYPE_NAMES:
        raise UserError(f"--kv-dtype {text!r} is not a KV storage type: use bf16 or fp8 (fp8_e4m3)")
    return KV_DTYPE_NAMES[text]


def kv_dtypes(text: str | None, allow_approximate: bool) -> tuple[str, ...]:
    """The KV types `roofsim plan` screens: the one --kv-dtype names, else bf16, and fp8 beside it under
    --allow-approximate (fp8 plans are approximate)."""
    one = kv_dtype(text)
    if one is not None:
        return (one,)
    return ("bf16", "fp8_e4m3") if allow_approximate else ("bf16",)


TP_AUTO = (1, 2, 4, 8, 16, 32, 64)
"""The degrees `--tp auto` tries, up to the GPUs the interconnect joins."""


def tp_degrees(text: str | None, model, gpu, many: bool = False) -> tuple[int, ...]:
    """--tp: one tensor-parallel degree (predict, simulate), or for `roofsim plan` a comma list or `auto` (every
    power of two up to the GPUs the GPU spec's interconnect joins that splits the model). Each degree must split
    the model's heads and MLP and fit the interconnect (tensor_parallel's one-line errors). None: (1,)."""
    from roofsim.tensor_parallel import check_degree, check_gpus

    if text is None:
        return (1,)
    text = text.strip()
    if many and text == "auto":
        most = int(gpu.interconnect.gpus.value) if gpu.interconnect is not None else 1
        out = []
        for d in (d for d in TP_AUTO if d <= most):
            try:
                check_degree(model, d)
            except UserError:
                continue
            out.append(d)
        return tuple(out)
    parts = text.split(",") if many else [text]
    if not all(p.strip().isdigit() for p in parts):
        form = "a whole number of GPUs" + (", a comma list (1,2,4) or auto" if many else "")
        raise UserError(f"--tp {text!r}: give {form}")
    degrees = tuple(dict.fromkeys(int(p) for p in parts))
    for d in degrees:
        if not 1 <= d <= 64:
            raise UserError(f"--tp {d}: the tensor-parallel degree is a number of GPUs from 1 to 64")
        check_degree(model, d)
        check_gpus(gpu, d)
    return degrees
