"""Where roofsim finds this machine's calibrated GPU profile when no `--gpu` is given (`roofsim generate`,
`roofsim serve`).

1. `$ROOFSIM_PROFILE`, if set: a profile TOML (used whatever the device), or a folder searched as in 2.
2. `$XDG_CONFIG_HOME/roofsim/` (`~/.config/roofsim/` when XDG_CONFIG_HOME is unset), where
   `roofsim calibrate --gpu h100-sxm -o ~/.config/roofsim` writes one.

A folder's profiles are the `*-calibrated.toml` files whose fingerprint names the device's GPU exactly (the name
CUDA reports, e.g. "NVIDIA H100 80GB HBM3"); the newest file wins where several do.
"""

from __future__ import annotations

import os
from pathlib import Path

from roofsim.errors import UserError

PROFILE_ENV = "ROOFSIM_PROFILE"


def profile_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "roofsim"


def _gpu_name(path: Path) -> str | None:
    """The fingerprint's gpu_name of a profile TOML, read without validating the rest of the file."""
    from roofsim.specs.tomlfile import tomllib

    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, ValueError):
        return None
    fp = doc.get("fingerprint")
    return fp.get("gpu_name") if isinstance(fp, dict) else None


def _in_folder(folder: Path, device_name: str | None) -> Path | None:
    if device_name is None or not folder.is_dir():
        return None
    hits = [p for p in folder.glob("*-calibrated.toml") if _gpu_name(p) == device_name]
    return max(hits, key=lambda p: p.stat().st_mtime_ns, default=None)


def find_profile(device_name: str | None) -> Path | None:
    """The calibrated profile for the GPU CUDA calls `device_name` (None: no GPU, only $ROOFSIM_PROFILE's file
    applies), or None where there is none."""
    env = os.environ.get(PROFILE_ENV)
    if env:
        path = Path(env).expanduser()
        if path.is_file():
            return path
        if not path.is_dir():
            raise UserError(
                f"${PROFILE_ENV}={env!r} is neither a profile TOML nor a folder; unset it or point it at "
                "the file `roofsim calibrate` wrote"
            )
        return _in_folder(path, device_name)
    return _in_folder(profile_dir(), device_name)
