"""Tensor-parallel runs: one process per rank, launched by torchrun, each holding and streaming its own heads.

    roofsim run plan.json --tp 2 -o measured.json
      -> python -m torch.distributed.run --standalone --nproc-per-node 2 -m roofsim.executor.launch '<run args>'
           rank r: process group (NCCL on CUDA, gloo on the CPU), device cuda:LOCAL_RANK, the model sliced to its
                   share (executor/shard.py), the plan run on the share, its own pinned KV store and copy streams

Every rank runs the same prompt (drawn from the same seed) through the same plan; the all-reduces after o_proj
and down_proj keep the ranks in step, so each forward ends at about the same time on all of them. Rank 0 writes
the trace: its spans and memory (one GPU's and one rank's host store), with each phase's step times the maximum
over the ranks (a step is done when its slowest rank is), and each rank's medians in the notes.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
from pathlib import Path

from roofsim.errors import UserError


def rank_env() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) inside a process torchrun started, else None."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))


def launch(args: argparse.Namespace, tp: int) -> int:
    """Run `roofsim run` with `args` as `tp` ranks under torchrun on this host; the exit code of the launch."""
    plain = {k: v for k, v in vars(args).items() if v is None or isinstance(v, (str, int, float, bool))}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={tp}",
        "-m",
        __name__,
        json.dumps(plain),
    ]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // tp)))
    proc = subprocess.Popen(cmd, env=env)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        # torchrun stops its ranks with the signal it got: rank 0 writes its partial trace
        proc.send_signal(signal.SIGINT)
        proc.wait()
        raise


def init(device_type: str, local_rank: int):
    """Join the process group of this rank: NCCL on cuda:local_rank (its threads bound to the GPU's NUMA node), gloo
    on the CPU. Returns the device and the NUMA node (None where not bound)."""
    import torch
    import torch.distributed as dist

    if device_type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        node = bind_to_gpu_node(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl", device_id=device)
        return device, node
    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return torch.device("cpu"), None


def _cpus(cpulist: str) -> set[int]:
    """CPU ids of a sysfs cpulist ("0-15,32-47")."""
    cpus: set[int] = set()
    for part in filter(None, cpulist.strip().split(",")):
        a, _, b = part.partition("-")
        cpus.update(range(int(a), int(b or a) + 1))
    return cpus


def bind_to_gpu_node(device) -> int | None:
    """Run this rank's threads on the CPUs of its GPU's NUMA node, so that the pinned KV store it allocates next
    (first touch) lies in the memory next to the GPU's PCIe root; the node, or None where sysfs or torch do not say
    (nothing is changed then)."""
    import torch

    props = torch.cuda.get_device_properties(device)
    ids = [getattr(props, k, None) for k in ("pci_domain_id", "pci_bus_id", "pci_device_id")]
    if None in ids:
        return None
    pci = Path(f"/sys/bus/pci/devices/{ids[0]:04x}:{ids[1]:02x}:{ids[2]:02x}.0/numa_node")
    try:
        node = int(pci.read_text())
        cpus = _cpus(Path(f"/sys/devices/system/node/node{node}/cpulist").read_text()) if node >= 0 else set()
        cpus &= os.sched_getaffinity(0)
        if not cpus:
            return None
        os.sched_setaffinity(0, cpus)
    except (OSError, ValueError):
        return None
    return node


def leave() -> None:
    """Leave the process group once every rank is done (a rank that tears its connections down while another
    still holds them can abort the other)."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def merge_phases(trace, rank: int, tp: int) -> None:
    """Every rank's phase times into rank 0's trace: per step the slowest rank's time, phase times likewise, and
    each rank's medians in the notes (a collective: every rank calls it)."""
    import torch.distributed as dist

    s = trace.summary
    mine = {
        "prefill": list(s.prefill.step_s),
        "prefill_s": s.prefill.time_s,
        "decode": list(s.decode.step_s),
    }
    every: list = [None] * tp
    dist.all_gather_object(every, mine)
    if rank:
        return
    for phase in ("prefill", "decode"):
        steps = [r[phase] for r in every]
        n = min(len(x) for x in steps)
        slowest = [max(x[i] for x in steps) for i in range(n)]
        stats = s.phase(phase)
        stats.step_s = slowest
        if phase == "prefill":
            stats.time_s = max((r["prefill_s"] for r in every if r["prefill_s"] is not None), default=None)
        else:
            stats.time_s = statistics.median(slowest) if slowest else None
        medians = ", ".join(f"{statistics.median(x) * 1e3:.2f}" if x else "-" for x in steps)
        trace.header.notes.append(
            f"{phase} step time (ms) per rank, median: {medians}; the trace keeps the slowest"
        )


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """A rank's `roofsim run`: the run's arguments as one JSON object."""
    from roofsim.executor.cli import run

    argv = sys.argv[1:] if argv is None else argv
    args = argparse.Namespace(**json.loads(argv[0]))
    signal.signal(
        signal.SIGTERM, _interrupt
    )  # torchrun's stop: the run writes what it measured, as on Ctrl-C
    try:
        return run(args)
    except KeyboardInterrupt:
        return 130
    except UserError as e:
        print(
            f"roofsim: error (rank {os.environ.get('RANK', '?')}): {' '.join(str(e).split())}",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    code = main()
    # The rank's work is written and its process group left: end here, without the interpreter's teardown, where
    # a native thread still joinable at static destruction can abort a finished rank (std::terminate).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
