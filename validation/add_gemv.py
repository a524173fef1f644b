"""Add one token's GEMV timings (Measurements.decode_gemv) and their fitted line (efficiency.gemv, gemv_us) to a
calibrated profile written before calibrate timed them, from executor benchmark runs on the same machine whose
`ceilings` stage timed Llama-3-8B's decode GEMVs the same way (each shape over >= 256 MiB of distinct weights, back
to back behind a sleeping GPU; validation/executor_bench.py `_decode_gemv_rates`). Every other fitted value stays:

    python validation/add_gemv.py validation/results/h100/s22 validation/results/h100/speed-s22/executor_bench_run*.json

The benchmark's shapes stand for calibrate's (kernels.layer_gemm_shapes of Llama-3-8B and the LM head): q for q
and o, kv for k and v, gate for gate and up, down, lm_head; every run's point of each shape counts. A profile whose
measurements hold decode_gemv already is left alone.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from roofsim.calibration import KernelPoint, Measurements, _v, gemv_fit
from roofsim.jsonfile import read_json_object
from roofsim.specs import load_gpu

# calibrate's layer shape (name, in, out) -> the benchmark's label of the same weight shape
SHAPES = {
    ("q", 4096, 4096): "q_4096x4096",
    ("k", 4096, 1024): "kv_1024x4096",
    ("v", 4096, 1024): "kv_1024x4096",
    ("o", 4096, 4096): "q_4096x4096",
    ("gate", 4096, 14336): "gate_14336x4096",
    ("up", 4096, 14336): "gate_14336x4096",
    ("down", 14336, 4096): "down_4096x14336",
    ("lm_head", 4096, 128256): "lm_head_128256x4096",
}


def points(bench_runs: list[Path]) -> list[KernelPoint]:
    out = []
    for run in bench_runs:
        rates = json.loads(run.read_text())["ceilings"]["decode_gemv_GBps"]
        for (name, k, n), label in SHAPES.items():
            nbytes = k * n * 2
            out.append(
                KernelPoint(
                    label=f"decode {name} 1x{k}x{n}", nbytes=nbytes, seconds=nbytes / (rates[label] * 1e9)
                )
            )
    return out


def add_gemv(folder: Path, bench_runs: list[Path]) -> bool:
    (measurements,) = folder.glob("*-calibrated-measurements.json")
    gpu_path = measurements.with_name(measurements.name.replace("-measurements.json", ".toml"))
    m = Measurements.model_validate(read_json_object(measurements, "measurements file"))
    if m.decode_gemv:
        return False
    m = m.model_copy(update={"decode_gemv": points(bench_runs)})
    fitted = gemv_fit(m, load_gpu(str(gpu_path)))
    lines = gpu_path.read_text().split("\n")
    at = lines.index("[efficiency]") + 1
    while at < len(lines) and lines[at].strip() and not lines[at].startswith("["):
        at += 1
    lines[at:at] = [f"{k} = {_v(*v)}" for k, v in fitted.items()]
    gpu_path.write_text("\n".join(lines))
    measurements.write_text(m.model_dump_json(indent=1))
    load_gpu(str(gpu_path))  # still a valid profile
    return True


if __name__ == "__main__":
    folder, runs = Path(sys.argv[1]), [Path(a) for a in sys.argv[2:]]
    print(f"{folder}: {'GEMV line added' if add_gemv(folder, runs) else 'has decode GEMVs already'}")
