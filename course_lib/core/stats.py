"""Small statistics the course reports with every rate: a rate is only as strong as its interval."""

from __future__ import annotations

import math


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for k successes in n trials (honest at rates near 0 or 1, unlike p ± 2·SE)."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def rate(k: int, n: int) -> dict:
    """{"rate", "k", "n", "ci95"} rounded for a MANIFEST or a table; rate is None when n == 0."""
    lo, hi = wilson(k, n)
    return {"rate": round(k / n, 4) if n else None, "k": k, "n": n, "ci95": [round(lo, 4), round(hi, 4)]}


def fmt_rate(r: dict) -> str:
    """'0.912 (255/280, 95% CI 0.873-0.940)'."""
    if not r["n"]:
        return "n/a (0 samples)"
    return f"{r['rate']:.3f} ({r['k']}/{r['n']}, 95% CI {r['ci95'][0]:.3f}-{r['ci95'][1]:.3f})"
