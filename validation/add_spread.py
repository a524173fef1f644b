"""Add the band's spread (roofsim.calibration.fit_spread) to a calibrated profile written before calibrate kept
it, from the measurements committed beside it, leaving every fitted value as it is (a refit would restate them
with the current fitting rules):

    python validation/add_spread.py validation/results/h100/s19

The folder holds <gpu>-calibrated.toml, <gpu>-calibrated-host.toml and <gpu>-calibrated-measurements.json; a
profile that has a [spread] section already is left alone.
"""

from __future__ import annotations

import sys
from pathlib import Path

from roofsim.calibration import Measurements, _v, fit_spread
from roofsim.jsonfile import read_json_object
from roofsim.specs.hardware import SpreadSpec


def add_spread(folder: Path) -> bool:
    (measurements,) = folder.glob("*-calibrated-measurements.json")
    gpu_path = measurements.with_name(measurements.name.replace("-measurements.json", ".toml"))
    host_path = measurements.with_name(measurements.name.replace("-measurements.json", "-host.toml"))
    if "[spread]" in gpu_path.read_text():
        return False
    m = Measurements.model_validate(read_json_object(measurements, "measurements file"))
    gpu, host = fit_spread(m)
    lines = ["", "[spread]"] + [f"{f} = {_v(*gpu[f])}" for f in SpreadSpec.model_fields if f in gpu]
    gpu_path.write_text(gpu_path.read_text().rstrip("\n") + "\n" + "\n".join(lines) + "\n")
    host_path.write_text(
        host_path.read_text().rstrip("\n") + "\n" + "".join(f"{k} = {_v(*v)}\n" for k, v in host.items())
    )
    return True


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(f"{arg}: {'spread added' if add_spread(Path(arg)) else 'has a spread already'}")
