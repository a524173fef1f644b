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
_POWERS = {"K": (3, 10), "M": (6, 20), "G": (9, 30), "T": (12, 40)}  # a bare prefix: 10^a or 2^b bytes?


MAX_TOKENS = 64 * 1024**2
"""The longest token count (context, gen, budget, chunk) roofsim takes: 64M, 16 times the longest context the papers
it reproduces ran (HeadInfer's 4M). The analytic model's work grows with the prefill chunks: seconds at 64M tokens,
minutes at 1G."""

MIN_BYTES, MAX_BYTES = MiB, 1024**5
"""Memory sizes (--gpu-mem, --host-mem) from 1 MiB (a smaller figure is a size without its unit) to 1 PiB."""


def parse_tokens(text: str | int, what: str = "context") -> int:
    """'1M' -> 1048576, '128K' -> 131072, '512000' -> 512000, '1.5K' -> 1536; at most MAX_TOKENS.

    K and M are binary here, as in the papers this tool reproduces (HeadInfer's 1M = 2^20 tokens).
    """
    if isinstance(text, bool) or not isinstance(text, (int, str)):
        raise UserError(f"bad {what} {text!r}: a number of tokens, e.g. 512000, 128K, 1M")
    if isinstance(text, int):
        value = text
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)\s*", text)
        if not m:
            raise UserError(
                f"bad {what} size {text!r}: use a whole number of tokens or a suffix, e.g. 512000, 128K, 1M"
            )
        exact = float(m.group(1)) * _TOKEN_SUFFIX[m.group(2).upper()]
        value = int(round(exact))
        if value != exact and value > 0:
            raise UserError(f"{what} {text!r} is {exact:g} tokens: give a whole number of tokens")
    if value <= 0:
        raise UserError(f"{what} must be a positive number of tokens, got {text!r}")
    if value > MAX_TOKENS:
        raise UserError(
            f"{what} {text!r} is over roofsim's bound: give at most {fmt_tokens(MAX_TOKENS)} tokens"
        )
    return value


def parse_bytes(text: str | float, what: str = "memory") -> float:
    """'24GB' -> 24e9, '24GiB' -> 24*2^30, '1TB' -> 1e12: decimal (KB, MB, GB, TB) and binary (KiB, MiB, GiB,
    TiB) units as they say. A bare number is bytes. Between MIN_BYTES and MAX_BYTES."""
    if isinstance(text, bool) or not isinstance(text, (int, float, str)):
        raise UserError(f"bad {what} {text!r}: a size such as 24GB, 80GiB or 1TB")
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?[iI]?[bB]?)\s*", text)
        unit = m.group(2).upper() if m else ""
        if m and unit in _POWERS:
            n, (dec, bin_) = m.group(1), _POWERS[unit]
            raise UserError(
                f"{what} {text!r} has no unit base: say {n}{unit}B (10^{dec} bytes) or {n}{unit}iB (2^{bin_} bytes)"
            )
        if not m or unit not in _BYTE_SUFFIX:
            raise UserError(f"bad {what} size {text!r}: use e.g. 24GB, 80GiB or 1TB")
        value = float(m.group(1)) * _BYTE_SUFFIX[unit]
    if not value > 0 or value == float("inf"):
        raise UserError(f"{what} must be a positive, finite size, got {text!r}")
    if value < MIN_BYTES:
        raise UserError(
            f"{what} {text!r} is {value:.0f} bytes: give at least 1 MiB, with its unit (e.g. 24GB)"
        )
    if value > MAX_BYTES:
        raise UserError(f"{what} {text!r} is {fmt_bytes_both(value)}: give at most 1 PiB")
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


def shows_band(s: float | None, band: tuple[float, float] | None) -> bool:
    """Whether fmt_band prints a band for this time (one wider than the time's printed precision)."""
    return fmt_band(s, band) != fmt_band(s, None)


def fmt_band(s: float | None, band: tuple[float, float] | None, sep: str = " ") -> str:
    """A time with its band in the time's unit: `150.0 ms (141.2-172.5)` (`sep` between the two); the time alone
    without a band, or where the band has no width at that precision."""
    text = fmt_seconds(float("nan") if s is None else s)
    if band is None or s is None or s != s:
        return text
    if s >= 100:
        scale, digits = 1.0, 0
    elif s >= 1:
        scale, digits = 1.0, 2
    elif s >= 1e-3:
        scale, digits = 1e3, 1
    else:
        scale, digits = 1e6, 0
    lo, hi = (f"{x * scale:.{digits}f}" for x in band)
    if lo == hi == f"{s * scale:.{digits}f}":
        return text
    return f"{text}{sep}({lo}-{hi})"


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
