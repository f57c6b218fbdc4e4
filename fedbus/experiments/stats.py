"""Means and Student-t confidence intervals over seeds. Pure: stdlib ``math`` only (no scipy).

The t quantile is found by bisection on the t distribution's CDF, itself the regularized incomplete beta
function evaluated by its continued fraction (Numerical Recipes §6.4, modified Lentz).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_CONFIDENCE = 0.95
_EPS = 1e-15
_TINY = 1e-300


@dataclass(frozen=True, slots=True, kw_only=True)
class Estimate:
    """The mean of ``n`` values and the half-width of its confidence interval (None with one value: no
    interval can be drawn from a single seed)."""

    mean: float
    half_width: float | None
    n: int
    confidence: float = DEFAULT_CONFIDENCE

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"Invalid estimate: n must be >= 1, got {self.n}")
        if self.half_width is not None and not self.half_width >= 0:
            raise ValueError(f"Invalid estimate: half_width must be >= 0, got {self.half_width}")

    @property
    def low(self) -> float:
        return self.mean - (self.half_width or 0.0)

    @property
    def high(self) -> float:
        return self.mean + (self.half_width or 0.0)

    def text(self, digits: int = 3) -> str:
        """``0.412 ± 0.031`` or, with one value, ``0.412 (1 seed: no interval)``."""
        if self.half_width is None:
            return f"{self.mean:.{digits}f} (1 seed: no interval)"
        return f"{self.mean:.{digits}f} ± {self.half_width:.{digits}f}"


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz)."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + aa / c
        c = c if abs(c) > _TINY else _TINY
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + aa / c
        c = c if abs(c) > _TINY else _TINY
        step = d * c
        h *= step
        if abs(step - 1.0) < _EPS:
            break
    return h


def incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), for a, b > 0 and 0 <= x <= 1."""
    if not (a > 0 and b > 0 and 0.0 <= x <= 1.0):
        raise ValueError(f"incomplete_beta: need a, b > 0 and 0 <= x <= 1, got a={a}, b={b}, x={x}")
    if x in (0.0, 1.0):
        return x
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_fraction(a, b, x) / a
    return 1.0 - front * _beta_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    if df <= 0:
        raise ValueError(f"t_cdf: df must be > 0, got {df}")
    tail = 0.5 * incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The t such that P(T <= t) = p (bisection to about 1e-12)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"t_quantile: p must be within (0, 1), got {p}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        low, high = high, high * 2.0
    for _ in range(200):
        middle = (low + high) / 2.0
        if t_cdf(middle, df) < p:
            low = middle
        else:
            high = middle
        if high - low < 1e-12:
            break
    return (low + high) / 2.0


def mean_ci(values: Sequence[float], confidence: float = DEFAULT_CONFIDENCE) -> Estimate | None:
    """The mean of ``values`` and its two-sided Student-t confidence interval, mean ± t(1 - a/2, n - 1) · s/√n
    with a = 1 - confidence and s the sample standard deviation. None for no values; no interval for one."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"mean_ci: confidence must be within (0, 1), got {confidence}")
    n = len(values)
    if n == 0:
        return None
    mean = math.fsum(values) / n
    if n == 1:
        return Estimate(mean=mean, half_width=None, n=1, confidence=confidence)
    variance = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    half = t_quantile((1.0 + confidence) / 2.0, n - 1) * math.sqrt(variance / n)
    return Estimate(mean=mean, half_width=half, n=n, confidence=confidence)
