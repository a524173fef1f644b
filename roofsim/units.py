"""Parsing and printing sizes and times. SI for bytes per second; token counts take K/M as powers of 1024."""

from __future__ import annotations

import re

from roofsim.errors import UserError

KiB = 1024
MiB = 1024**2
GiB = 1024**3
GB = 1e9

_TOKEN_SUFFIX = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}
_BYTE_SUFFIX = {
    "": 1,
    "B": 1,
    "KB": 1e3,
    "MB": 1e6,
    "GB": 1e9,
    "TB": 1e12,
    "KIB": KiB,
    "MIB": MiB,
    "GIB": GiB,
    "TIB": 1024**4,
}


def parse_tokens(text: str | int, what: str = "context") -> int:
    """'1M' -> 1048576, '128K' -> 131072, '512000' -> 512000.

    K and M are binary here, as in the papers this tool reproduces (HeadInfer's 1M = 2^20 tokens).
    """
    if isinstance(text, int):
        value = text
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)\s*", str(text))
        if not m:
            raise UserError(
                f"bad {what} size {text!r}: use a whole number of tokens or a suffix, e.g. 512000, 128K, 1M"
            )
        value = int(round(float(m.group(1)) * _TOKEN_SUFFIX[m.group(2).upper()]))
    if value <= 0:
        raise UserError(f"{what} must be a positive number of tokens, got {text!r}")
    return value


def parse_bytes(text: str | float, what: str = "memory") -> float:
    """'24GB' -> 24e9, '24GiB' -> 24*2^30, '1TB' -> 1e12. A bare number is bytes."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?[iI]?[bB]?)\s*", str(text))
        if not m or m.group(2).upper() not in _BYTE_SUFFIX:
            raise UserError(f"bad {what} size {text!r}: use e.g. 24GB, 80GiB or 1TB")
        value = float(m.group(1)) * _BYTE_SUFFIX[m.group(2).upper()]
    if value <= 0:
        raise UserError(f"{what} must be positive, got {text!r}")
    return value


def fmt_bytes(n: float) -> str:
    """Binary units, as memory is sized: 1.00 GiB, 512 MiB."""
    for unit, size in (("TiB", 1024**4), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"


def fmt_bytes_si(n: float) -> str:
    """Decimal units, as datasheets, link rates and sizes given as 24GB count: 24.00 GB, 931 MB."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"


def fmt_bytes_both(n: float) -> str:
    """A size in both bases, where the two could be confused: 1TB of --host-mem is 1.00 TB (931.32 GiB)."""
    return f"{fmt_bytes_si(n)} ({fmt_bytes(n)})"


def fmt_tokens(n: int) -> str:
    """1M, 128K, or 3.93M (K, M = 1024, 1024^2) for counts that are not round."""
    if n % MiB == 0:
        return f"{n // MiB}M"
    if n % KiB == 0 and n < MiB:
        return f"{n // KiB}K"
    if n >= MiB:
        return f"{n / MiB:.2f}M"
    return str(n)


def fmt_seconds(s: float) -> str:
    if s != s or s == float("inf"):
        return "-"
    if s >= 100:
        return f"{s:.0f} s"
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.1f} ms"
    return f"{s * 1e6:.0f} us"
