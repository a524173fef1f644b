"""The geometry a plan gives the KV, shared by the models (analytic and simulated) and the executor: slots of KV
heads per layer and which stay resident, token blocks of a streamed slot, and the heads the CPU attends.

Every check here is a user error in one line (the knob, the model's number it must fit, the fix), raised the same
whether a plan is priced or run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from roofsim.errors import UserError


def divisors(n: int) -> list[int]:
    """The group sizes that split n KV heads evenly."""
    return [d for d in range(1, n + 1) if n % d == 0]


def check_divides(total: int, part: int, what: str) -> None:
    if part <= 0 or total % part:
        raise UserError(f"{what}={part} must divide the model's {total} KV heads; pick a divisor of {total}")


def resident_per_layer(value: int | list[int], n_layers: int, slots: int) -> list[int]:
    """Resident slots of each layer from a plan's `resident_slots` (one int for all layers, or one per layer),
    each within 0..slots."""
    values = [value] * n_layers if isinstance(value, int) else list(value)
    if len(values) != n_layers:
        raise UserError(
            f"resident_slots lists {len(values)} layers but the model has {n_layers}; give one value per layer"
        )
    for r in values:
        if not 0 <= r <= slots:
            raise UserError(
                f"resident_slots={r} is outside 0..{slots} (slots per layer at this kv_heads_per_slot)"
            )
    return values


def spread(total: int, layers: int) -> list[int] | int:
    """`total` resident slots over the layers as evenly as possible (later layers get the extra ones)."""
    base, extra = divmod(total, layers)
    if extra == 0:
        return base
    return [base] * (layers - extra) + [base + 1] * extra


def block_count(P, token_block: int | None):
    """Calls a streamed slot's past of P tokens takes: one per block of token_block tokens (none for an empty
    past), or one for the whole past without blocks."""
    P = np.asarray(P, dtype=float)
    return np.ceil(P / token_block) if token_block else (P > 0).astype(float)


def last_block(P, token_block: int):
    """Length of the last (possibly short) block of a past of P > 0 tokens: P - token_block * floor((P-1)/tb)."""
    P = np.asarray(P, dtype=float)
    return P - token_block * np.floor((P - 1) / token_block)


def block_lengths(P: float, token_block: int) -> set[float]:
    """Key lengths of the blocks a past of P tokens is attended in, token_block at a time: every block but the
    last is full, so at most two lengths."""
    if P <= 0:
        return set()
    lengths = {float(last_block(P, token_block))}
    if P > token_block:
        lengths.add(float(token_block))
    return lengths


@dataclass(frozen=True)
class CpuHeads:
    """How cpu_attention's heads split: the last `cpu_kv_heads` of each layer are attended by the CPU at decode,
    in `cpu_slots` slots of `cpu_slot_heads` heads (the plan's slot size where it divides them, else one head);
    the other `gpu_heads` form `gpu_slots` slots of `kv_heads_per_slot` as in head_offload."""

    n_kv_heads: int
    cpu_kv_heads: int
    kv_heads_per_slot: int
    resident_slots: int

    @property
    def gpu_heads(self) -> int:
        return self.n_kv_heads - self.cpu_kv_heads

    @property
    def gpu_slots(self) -> int:
        return self.gpu_heads // self.kv_heads_per_slot if self.gpu_heads else 0

    @property
    def cpu_slot_heads(self) -> int:
        g, hc = self.kv_heads_per_slot, self.cpu_kv_heads
        return g if 0 < g <= hc and hc % g == 0 else 1

    @property
    def cpu_slots(self) -> int:
        """CPU slots per layer: the executor attends (and copies back) each one apart."""
        return self.cpu_kv_heads // self.cpu_slot_heads if self.cpu_kv_heads else 0

    @property
    def ring_slot_heads(self) -> int:
        """Heads one ring buffer holds: a GPU slot's, or a CPU slot's (those stream too, at prefill)."""
        gpu = self.kv_heads_per_slot if self.gpu_heads else 0
        cpu = self.cpu_slot_heads if self.cpu_kv_heads else 0
        return max(gpu, cpu, 1)

    @property
    def prefill_slot_heads(self) -> int | None:
        """The one slot size every head streams in at prefill: the plan's where the CPU heads' slots have it (or
        there are no CPU heads), the CPU heads' where every head is theirs; None where the GPU heads stream in the
        plan's slots and the CPU heads in slots of cpu_slot_heads (two sizes)."""
        g = self.kv_heads_per_slot
        gc = self.cpu_slot_heads if self.cpu_kv_heads else g
        if gc == g:
            return g
        return gc if self.cpu_kv_heads == self.n_kv_heads else None


def cpu_heads(n_kv_heads: int, cpu_kv_heads: int, kv_heads_per_slot: int, resident_slots: int) -> CpuHeads:
    """The split of a cpu_attention plan, once its head counts are checked against the model's."""
    if cpu_kv_heads > n_kv_heads:
        raise UserError(f"cpu_kv_heads={cpu_kv_heads} exceeds the model's {n_kv_heads} KV heads")
    heads = CpuHeads(n_kv_heads, cpu_kv_heads, kv_heads_per_slot, resident_slots)
    if heads.gpu_heads:
        check_divides(heads.gpu_heads, kv_heads_per_slot, "kv_heads_per_slot (of the heads left on the GPU)")
    if resident_slots > heads.gpu_slots:
        raise UserError(f"resident_slots={resident_slots} exceeds the {heads.gpu_slots} GPU slots per layer")
    return heads
