"""Sizes and ages as people write and read them: `4GiB`, `512MB`, `7d`, `36h`.

Parsing raises ValueError with what would be valid, so the spec and the CLI can turn it
into their one-line errors; formatting is for tables a person reads.
"""

from __future__ import annotations

import re

_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
               "t": 1000**4, "tb": 1000**4, "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4}
_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_NUMBER_UNIT = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*$")


def parse_size(value: int | float | str) -> int:
    """Bytes from 4294967296, '4GiB', '4GB', '512MiB', '1.5G' (K/M/G/T are powers of 1000, KiB/MiB/GiB/TiB of 1024)."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size such as 4GiB, 512MB or a number of bytes (got {value!r})")
    if isinstance(value, int | float):
        number, unit = float(value), ""
    else:
        match = _NUMBER_UNIT.match(str(value))
        if not match or match.group(2).lower() not in _SIZE_UNITS:
            raise ValueError(f"expected a size such as 4GiB, 512MB or a number of bytes (got {value!r})")
        number, unit = float(match.group(1)), match.group(2).lower()
    size = int(number * _SIZE_UNITS[unit])
    if size <= 0:
        raise ValueError(f"must be more than 0 bytes (got {value!r})")
    return size


def parse_age(text: str) -> float:
    """Seconds from '7d', '36h', '90m', '30s', '2w' (a bare number is seconds)."""
    match = _NUMBER_UNIT.match(text)
    unit = match.group(2).lower() if match else None
    if match is None or (unit not in _AGE_UNITS and unit != ""):
        raise ValueError(f"expected an age such as 7d, 36h, 90m, 30s or 2w (got {text!r})")
    return float(match.group(1)) * _AGE_UNITS.get(unit, 1)


def human_size(n: float) -> str:
    """1536 -> '1.5 KiB' (binary units, like du -h)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def human_age(seconds: float) -> str:
    """93784 -> '1d 2h' (the two largest units)."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    parts = []
    for name, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size or parts:
            parts.append(f"{int(seconds // size)}{name}")
            seconds %= size
        if len(parts) == 2:
            break
    return " ".join(p for p in parts if not p.startswith("0")) or "0s"
