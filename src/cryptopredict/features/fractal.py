"""Fractal and chaos feature family (prefix ``fr_``): Hurst exponents, fractal dimensions, the largest
Lyapunov exponent, the correlation dimension, recurrence quantification and two entropies.

Inputs. ``r_i = ln(close_i / close_{i-1})``, the bar-to-bar log return (bars as they are: a data gap is one
return). A measure of window ``W`` evaluated at bar ``e`` looks at the ``W`` returns ``r_{e-W+1} .. r_e``,
i.e. the closes of bars ``e-W .. e``. Higuchi and Katz need a path and read the ``W + 1`` log closes
``ln close_{e-W} .. ln close_e`` instead; every other measure reads the returns. All measures are
scale-free (slopes of log-log fits, ratios, entropies), so they do not depend on the price level.

Evaluation and carry-forward. The measures are too costly for every bar, so they are evaluated on the
first bar of each ``stride_hours`` block of UTC time counted from the epoch (with hourly bars and the
default 24: the 00:00 UTC bar; if that bar is missing, the first bar after it), on the window ending at
that bar. Every bar in between carries the value of the last evaluation at or before it, unchanged; a
value never comes from a later window. Evaluation points depend on timestamps alone, so a history cut at
either end is evaluated on the same bars. A column is NaN until its first evaluation on a full window,
and an evaluation whose window holds a non-finite return is NaN (and carried as such).

``FeatureSpec.window`` is ``W + 1``: the bars, the evaluation bar included, that a value reads; a row
carries a value computed up to ``stride_hours - 1`` bars earlier (more across a gap in the data).

Determinism. Every fit is an ordinary least-squares line; nothing is sampled. Numba kernels, compiled
once and cached on disk (``cache=True``). ``compute_fractal`` with the default config takes about 0.6 s
for BTCUSDT's full 1h history (65k bars) on one core.

Reference formulas, per window (``x``: the series the measure reads, ``N`` its length):

- R/S Hurst (Hurst 1951, Anis-Lloyd-Peters correction): ``x`` split into ``N // n`` chunks of ``n``,
  aligned to the window end; ``(R/S)_n`` = mean over chunks of range(cumsum(chunk - mean)) / std(chunk,
  ddof=1), chunks with zero range skipped; ``H = 0.5 + slope(ln n, ln (R/S)_n - ln E[(R/S)_n])`` with
  ``E[(R/S)_n] = (n - 1/2)/n * Gamma((n-1)/2) / (sqrt(pi) Gamma(n/2)) * sum_{i<n} sqrt((n-i)/i)`` (the
  Gamma ratio replaced by ``1/sqrt(n pi / 2)`` for ``n > 340``). ``n`` = hurst_min_n, doubling, <= N/4.
  This is nolds' ``hurst_rs(corrected=True, unbiased=True, fit="poly")`` with end-aligned chunks.
- DFA (Peng 1994): profile ``y = cumsum(x - mean x)``; windows of ``n`` with 50% overlap aligned to the
  window end; ``F(n) = sqrt(mean over windows of mean squared residual of a least-squares line)``;
  ``alpha = slope(ln n, ln F(n))``, same ``n`` as R/S. 0.5 for white noise.
- Higuchi FD (Higuchi 1988): ``L_m(k) = sum_j |x[m+jk] - x[m+(j-1)k]| (N-1) / (floor((N-m-1)/k) k) / k``
  for ``m < k``, ``L(k) = mean_m L_m(k)``, ``D = slope(ln 1/k, ln L(k))`` for ``k = 1..higuchi_kmax``;
  1 for a line, 1.5 for a random walk, 2 for white noise. Read on the log-price path.
- Katz FD (Katz 1988): ``D = log10(L/a) / log10(d/a)``, ``L = sum |dx|``, ``a = L/(N-1)``,
  ``d = max |x_i - x_0|`` (antropy's ``katz_fd``); NaN where ``d <= a``. Read on the log-price path.
- Largest Lyapunov exponent (Rosenstein 1993), in 1/bar: delay vectors ``v_i`` (emb_dim, delay); for
  ``i < ntraj = M - T + 1`` the Euclidean nearest neighbour ``j`` among ``i < ntraj`` with
  ``|i - j| > theiler``; ``d(k) = mean_i ln |v_{i+k} - v_{j(i)+k}|`` (zero distances left out),
  ``lambda = slope(k, d(k))`` for ``k = 0..T-1``, ``T = lyap_traj_len`` (nolds' ``lyap_r``, fit="poly").
- Correlation dimension (Grassberger-Procaccia 1983): ``C(r)`` = share of delay-vector pairs with
  ``|i - j| > theiler`` and Euclidean distance ``< r``, on a grid of ``cd_bins_per_octave`` radii per
  octave (evenly spaced in ``r^2`` within an octave); ``D2 = slope(ln r, ln C(r))`` over the radii where
  ``cd_c_range[0] <= C(r) <= cd_c_range[1]`` (at least 3 radii). A window takes the column only if its
  smallest fitted ``C`` still rests on ``cd_min_pairs`` pairs, i.e. ``cd_c_range[0] * P >= cd_min_pairs``
  with ``P`` the admissible pairs. With the defaults a 256-return window has ``P = 31,125``: the small-r
  end of the fit would stand on ~31 pairs, the estimate is noise, so 256 cannot carry it and such a
  column is omitted (logged); 512 returns give ``P = 127,765`` (128 pairs). Well inside Eckmann-Ruelle's
  bound ``D2 < 2 log10 N`` (5.4 at N = 510) for ``emb_dim = 3``.
- RQA (Marwan 2007): ``R_ij = 1`` if ``max_a |x_{i+a delay} - x_{j+a delay}| <= rqa_radius * std(x)``
  (Chebyshev norm on the delay vectors) and ``|i - j| > theiler``. ``RR = sum R / admissible pairs``;
  ``DET`` = share of recurrence points on diagonal lines of length ``>= rqa_lmin``; ``LAM`` = share on
  vertical lines of length ``>= rqa_vmin``. NaN (DET, LAM) when there is no recurrence.
- Sample entropy (Richman & Moorman 2000): ``-ln(A/B)``, ``B`` (``A``) = pairs ``i < j <= N-m-1`` of
  templates of length ``m`` (``m+1``) within Chebyshev distance ``< sampen_r * std(x)``, ``m`` =
  sampen_order (antropy's ``sample_entropy``); NaN where ``A`` or ``B`` is 0.
- Permutation entropy (Bandt & Pompe 2002): Shannon entropy of the ordinal patterns of
  ``(x_i, x_{i+delay}, ..)`` of length permen_order (ties ranked by position), divided by
  ``log2(order!)``, in [0, 1] (antropy's ``perm_entropy(normalize=True)``).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Literal

import numba
import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator

from cryptopredict.features.base import FamilyResult, FeatureSpec, require_bars

log = logging.getLogger(__name__)

FAMILY = "fractal"
PREFIX = "fr"
LAG = "bar close"
SOURCE = "ohlcv.close"

Measure = Literal["hurst_rs", "hurst_dfa", "higuchi_fd", "katz_fd", "lyap_r", "corr_dim", "rqa", "sampen",
                  "permen"]

# The O(N) measures run on both windows; the O(N^2) ones on 256 returns, the correlation dimension on 512
# (see the module docstring) -- together about 0.6 s for 65k hourly bars on one core.
DEFAULT_WINDOWS: dict[str, tuple[int, ...]] = {
    "hurst_rs": (256, 512), "hurst_dfa": (256, 512), "higuchi_fd": (256, 512), "katz_fd": (256, 512),
    "lyap_r": (256,), "corr_dim": (512,), "rqa": (256,), "sampen": (256,), "permen": (256, 512),
}


class FractalConfig(BaseModel):
    """Windows (in log returns of 1h bars), evaluation stride and measure parameters of the fractal family.

    A measure is on when ``windows`` has it as a key; each of its windows gives one column (three for
    ``rqa``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    windows: dict[Measure, tuple[PositiveInt, ...]] = Field(
        default_factory=lambda: dict(DEFAULT_WINDOWS),
        description="measure -> window lengths in log returns")
    stride_hours: PositiveInt = Field(24, description="evaluate on the first bar of each block of this many "
                                                      "hours since 1970-01-01 00:00 UTC; carry in between")
    emb_dim: int = Field(3, ge=2, description="delay-embedding dimension (Lyapunov, correlation dim., RQA)")
    delay: PositiveInt = Field(1, description="embedding delay in bars")
    theiler: int = Field(4, ge=0, description="vector pairs with |i - j| <= theiler are left out "
                                              "(Lyapunov neighbours, correlation sum, RQA)")
    hurst_min_n: int = Field(8, ge=4, description="smallest R/S chunk and DFA box, doubled up to W/4")
    higuchi_kmax: int = Field(10, ge=2, description="largest Higuchi lag k")
    lyap_traj_len: int = Field(10, ge=3, description="steps of mean log divergence the Lyapunov slope fits")
    cd_c_range: tuple[float, float] = Field((1e-3, 1e-1), description="C(r) range of the D2 scaling fit")
    cd_min_pairs: PositiveInt = Field(100, description="pairs the smallest fitted C(r) must rest on")
    cd_bins_per_octave: Literal[2, 4, 8, 16] = Field(4, description="radii per octave of r in C(r)")
    rqa_radius: float = Field(0.5, gt=0, description="recurrence radius in window standard deviations "
                                                     "(Chebyshev norm)")
    rqa_lmin: int = Field(2, ge=2, description="shortest diagonal line counted in DET")
    rqa_vmin: int = Field(2, ge=2, description="shortest vertical line counted in LAM")
    sampen_order: int = Field(2, ge=1, description="sample entropy template length m")
    sampen_r: float = Field(0.2, gt=0, description="sample entropy tolerance in window standard deviations")
    permen_order: int = Field(3, ge=2, le=7, description="ordinal pattern length")
    permen_delay: PositiveInt = Field(1, description="ordinal pattern delay in bars")

    @model_validator(mode="after")
    def _check(self) -> FractalConfig:
        lo, hi = self.cd_c_range
        if not 0 < lo < hi <= 1:
            raise ValueError(f"cd_c_range must satisfy 0 < low < high <= 1, got {self.cd_c_range}")
        embed_span = (self.emb_dim - 1) * self.delay
        for measure, wins in self.windows.items():
            if len(set(wins)) != len(wins):
                raise ValueError(f"windows[{measure!r}] has duplicates: {wins}")
            smallest = {
                "hurst_rs": 8 * self.hurst_min_n, "hurst_dfa": 8 * self.hurst_min_n,
                "higuchi_fd": 4 * self.higuchi_kmax, "katz_fd": 2,
                "lyap_r": embed_span + self.lyap_traj_len + 2 * self.theiler + 2,
                "corr_dim": embed_span + self.theiler + 4, "rqa": embed_span + self.theiler + 2,
                "sampen": self.sampen_order + 2,
                "permen": (self.permen_order - 1) * self.permen_delay + 2,
            }[measure]
            if wins and min(wins) < smallest:
                raise ValueError(f"windows[{measure!r}] = {wins}: each must be >= {smallest}")
        return self

    def corr_dim_pairs(self, window: int) -> int:
        """Admissible vector pairs (``|i - j| > theiler``) in a window of ``window`` returns."""
        m = window - (self.emb_dim - 1) * self.delay - self.theiler
        return max(m, 0) * max(m - 1, 0) // 2

    def corr_dim_ok(self, window: int) -> bool:
        """Whether a window is long enough for the correlation dimension (see the module docstring)."""
        return self.cd_c_range[0] * self.corr_dim_pairs(window) >= self.cd_min_pairs


# ----------------------------------------------------------------------------------------------------------
# Per-window kernels. Each takes one window as a float64 array and returns NaN where the measure is
# undefined (too short, constant, non-finite input).
# ----------------------------------------------------------------------------------------------------------

@numba.njit(cache=True)
def _slope(xs: np.ndarray, ys: np.ndarray, n: int) -> float:
    """Least-squares slope of ys[:n] on xs[:n]; NaN with fewer than 2 points or no spread in x."""
    if n < 2:
        return np.nan
    mx = 0.0
    my = 0.0
    for i in range(n):
        mx += xs[i]
        my += ys[i]
    mx /= n
    my /= n
    sxx = 0.0
    sxy = 0.0
    for i in range(n):
        sxx += (xs[i] - mx) * (xs[i] - mx)
        sxy += (xs[i] - mx) * (ys[i] - my)
    if sxx == 0.0:
        return np.nan
    return sxy / sxx


@numba.njit(cache=True)
def _all_finite(x: np.ndarray) -> bool:
    for v in x:
        if not np.isfinite(v):
            return False
    return True


@numba.njit(cache=True)
def _std(x: np.ndarray) -> float:
    """Population standard deviation (ddof=0), two-pass."""
    m = x.mean()
    s = 0.0
    for v in x:
        s += (v - m) * (v - m)
    return math.sqrt(s / x.size)


@numba.njit(cache=True)
def _expected_rs(n: int) -> float:
    """Anis-Lloyd-Peters expected (R/S)_n of white noise."""
    back = 0.0
    for i in range(1, n):
        back += math.sqrt((n - i) / i)
    if n <= 340:
        middle = math.exp(math.lgamma((n - 1) * 0.5) - math.lgamma(n * 0.5)) / math.sqrt(math.pi)
    else:
        middle = 1.0 / math.sqrt(n * math.pi * 0.5)
    return (n - 0.5) / n * middle * back


@numba.njit(cache=True)
def hurst_rs(x: np.ndarray, min_n: int) -> float:
    """Corrected R/S Hurst exponent of the increments ``x`` (module docstring); 0.5 for white noise."""
    size = x.size
    if not _all_finite(x):
        return np.nan
    xs = np.empty(64)
    ys = np.empty(64)
    k = 0
    n = min_n
    while n <= size // 4:
        total = 0.0
        count = 0
        for c in range(size // n):
            start = size - (c + 1) * n
            mean = 0.0
            for i in range(start, start + n):
                mean += x[i]
            mean /= n
            cum = 0.0
            hi = -np.inf
            lo = np.inf
            ss = 0.0
            for i in range(start, start + n):
                d = x[i] - mean
                cum += d
                ss += d * d
                hi = max(hi, cum)
                lo = min(lo, cum)
            rng = hi - lo
            if rng > 0.0 and ss > 0.0:
                total += rng / math.sqrt(ss / (n - 1))
                count += 1
        if count > 0:
            xs[k] = math.log(n)
            ys[k] = math.log(total / count) - math.log(_expected_rs(n))
            k += 1
        n *= 2
    return _slope(xs, ys, k) + 0.5


@numba.njit(cache=True)
def hurst_dfa(x: np.ndarray, min_n: int) -> float:
    """DFA-1 exponent alpha of ``x`` (module docstring): 0.5 white noise, > 0.5 persistent."""
    size = x.size
    if not _all_finite(x):
        return np.nan
    profile = np.cumsum(x - x.mean())
    xs = np.empty(64)
    ys = np.empty(64)
    k = 0
    n = min_n
    while n <= size // 4:
        step = max(n // 2, 1)
        tbar = (n - 1) * 0.5
        stt = n * (n * n - 1) / 12.0
        acc = 0.0
        count = 0
        start = size - n
        while start >= 0:
            ybar = 0.0
            for i in range(n):
                ybar += profile[start + i]
            ybar /= n
            syy = 0.0
            sty = 0.0
            for i in range(n):
                dy = profile[start + i] - ybar
                syy += dy * dy
                sty += (i - tbar) * dy
            acc += max(syy - sty * sty / stt, 0.0) / n
            count += 1
            start -= step
        fluct = math.sqrt(acc / count)
        if fluct > 0.0:
            xs[k] = math.log(n)
            ys[k] = math.log(fluct)
            k += 1
        n *= 2
    return _slope(xs, ys, k)


@numba.njit(cache=True)
def higuchi_fd(path: np.ndarray, kmax: int) -> float:
    """Higuchi fractal dimension of ``path`` (module docstring): 1 line, 1.5 random walk, 2 white noise."""
    size = path.size
    if not _all_finite(path):
        return np.nan
    xs = np.empty(kmax)
    ys = np.empty(kmax)
    n = 0
    for k in range(1, kmax + 1):
        total = 0.0
        for m in range(k):
            n_max = (size - m - 1) // k
            if n_max < 1:
                return np.nan
            length = 0.0
            for j in range(1, n_max + 1):
                length += abs(path[m + j * k] - path[m + (j - 1) * k])
            total += length * (size - 1) / (k * n_max) / k
        mean_length = total / k
        if mean_length > 0.0:
            xs[n] = math.log(1.0 / k)
            ys[n] = math.log(mean_length)
            n += 1
    return _slope(xs, ys, n)


@numba.njit(cache=True)
def katz_fd(path: np.ndarray) -> float:
    """Katz fractal dimension of ``path`` (module docstring); NaN where the path never leaves one step."""
    if path.size < 2 or not _all_finite(path):
        return np.nan
    length = 0.0
    reach = 0.0
    for i in range(1, path.size):
        length += abs(path[i] - path[i - 1])
        reach = max(reach, abs(path[i] - path[0]))
    step = length / (path.size - 1)
    if step <= 0.0 or reach <= step:
        return np.nan
    return math.log10(length / step) / math.log10(reach / step)


@numba.njit(cache=True)
def _sq_dists(x: np.ndarray, j: int, lo: int, hi: int, dim: int, delay: int, out: np.ndarray) -> None:
    """``out[t]`` = squared Euclidean distance between delay vectors ``lo + t`` and ``j``, for
    ``lo <= lo + t < hi`` (vector ``i`` is ``(x[i], x[i + delay], .., x[i + (dim-1) delay])``). Written over
    slices so that the loops vectorise."""
    n = hi - lo
    acc = out[:n]
    acc[:] = 0.0
    for a in range(dim):
        xj = x[j + a * delay]
        xa = x[lo + a * delay:lo + a * delay + n]
        for t in range(n):
            diff = xa[t] - xj
            acc[t] += diff * diff


@numba.njit(cache=True)
def lyap_rosenstein(x: np.ndarray, dim: int, delay: int, min_tsep: int, traj_len: int) -> float:
    """Rosenstein's largest Lyapunov exponent of ``x`` in 1/sample (module docstring); ~ln 2 for the
    logistic map at r = 4, ~0 for a periodic signal. Ties go to the earlier neighbour, as numpy's argmin."""
    if not _all_finite(x):
        return np.nan
    m = x.size - (dim - 1) * delay
    ntraj = m - traj_len + 1
    if ntraj <= 0:
        return np.nan
    d2 = np.empty(ntraj)
    best = np.full(ntraj, np.inf)
    nb = np.full(ntraj, -1, dtype=np.int64)
    for i in range(ntraj):
        # best[i] already holds the nearest among j < i; scan j > i + min_tsep, then offer i to those j
        lo = i + min_tsep + 1
        if lo >= ntraj:
            continue
        _sq_dists(x, i, lo, ntraj, dim, delay, d2)
        row_best = best[i]
        row_nb = nb[i]
        for t in range(ntraj - lo):
            if d2[t] < row_best:
                row_best = d2[t]
                row_nb = lo + t
        best[i] = row_best
        nb[i] = row_nb
        later_best = best[lo:]
        later_nb = nb[lo:]
        for t in range(ntraj - lo):
            if d2[t] < later_best[t]:
                later_best[t] = d2[t]
                later_nb[t] = i
    for i in range(ntraj):
        if nb[i] < 0:
            return np.nan
    ks = np.empty(traj_len)
    div = np.empty(traj_len)
    n = 0
    for k in range(traj_len):
        total = 0.0
        count = 0
        for i in range(ntraj):
            dd = 0.0
            for a in range(dim):
                diff = x[i + k + a * delay] - x[nb[i] + k + a * delay]
                dd += diff * diff
            if dd > 0.0:
                total += 0.5 * math.log(dd)
                count += 1
        if count > 0:
            ks[n] = k
            div[n] = total / count
            n += 1
    return _slope(ks, div, n)


# Correlation-sum histogram. A squared distance d2 falls in bin (float64 bits of d2) >> (52 - s), less an
# offset: its binary exponent and first s mantissa bits, i.e. 2^s bins per octave of d2 (2^(s+1) per
# octave of the distance r), evenly spaced in d2 within the octave. Bin 0 also holds every d < 2^-48 (and
# d = 0), the last bin every d >= 2^16; the fit uses neither. Counting by bits keeps the pair loop free
# of logarithms.
_CD_LOW_OCTAVE = 96  # of d2: the grid starts at d2 = 2^-96
_CD_OCTAVES = 128


@numba.njit(cache=True)
def _cd_count(d2: np.ndarray, n: int, mantissa_bits: int, hist: np.ndarray, sign: int) -> None:
    """Add ``sign`` to the bin of each of ``d2[:n]``. A NaN or infinite distance lands in an end bin; it
    is removed from that same bin, and a window holding one is NaN anyway."""
    bits = d2.view(np.int64)
    base = (1023 - _CD_LOW_OCTAVE) << mantissa_bits
    top = hist.size - 1
    for t in range(n):
        b = (bits[t] >> (52 - mantissa_bits)) - base
        hist[min(max(b, 0), top)] += sign


@numba.njit(cache=True)
def _cd_fit(hist: np.ndarray, n_pairs: int, mantissa_bits: int, c_lo: float, c_hi: float) -> float:
    """D2 from a distance histogram: slope of ln C(r) on ln r over the bin edges r with
    c_lo <= C(r) <= c_hi, C(r) = share of pairs closer than r; NaN with fewer than 3 such edges."""
    if n_pairs <= 0:
        return np.nan
    per_octave = 1 << mantissa_bits
    xs = np.empty(hist.size)
    ys = np.empty(hist.size)
    n = 0
    cum = 0
    for b in range(hist.size - 1):
        cum += hist[b]
        c = cum / n_pairs
        if c_lo <= c <= c_hi:
            octave = b // per_octave - _CD_LOW_OCTAVE
            upper_d2 = (1.0 + (b % per_octave + 1) / per_octave)  # upper edge of the bin, in 2^octave
            xs[n] = 0.5 * (octave * math.log(2.0) + math.log(upper_d2))
            ys[n] = math.log(c)
            n += 1
    if n < 3:
        return np.nan
    return _slope(xs, ys, n)


@numba.njit(cache=True)
def corr_dim(x: np.ndarray, dim: int, delay: int, theiler: int, c_lo: float, c_hi: float,
             mantissa_bits: int) -> float:
    """Grassberger-Procaccia correlation dimension of ``x`` (module docstring); ~1 on a closed curve.
    ``mantissa_bits`` = log2(bins per octave of r) - 1."""
    if not _all_finite(x):
        return np.nan
    m = x.size - (dim - 1) * delay
    hist = np.zeros(_CD_OCTAVES << mantissa_bits, dtype=np.int64)
    d2 = np.empty(max(m, 1))
    n_pairs = 0
    for j in range(theiler + 1, m):
        _sq_dists(x, j, 0, j - theiler, dim, delay, d2)
        _cd_count(d2, j - theiler, mantissa_bits, hist, 1)
        n_pairs += j - theiler
    return _cd_fit(hist, n_pairs, mantissa_bits, c_lo, c_hi)


@numba.njit(cache=True)
def rqa(x: np.ndarray, dim: int, delay: int, radius: float, theiler: int, lmin: int,
        vmin: int) -> tuple[float, float, float]:
    """(RR, DET, LAM) of ``x`` with recurrence radius ``radius`` in the units of ``x`` (module docstring).

    One branch-free pass over the rows of the full matrix, keeping the length of the current run on every
    diagonal and in every column; a run is counted when it ends (a non-recurrence or the matrix edge)."""
    if not _all_finite(x):
        return np.nan, np.nan, np.nan
    m = x.size - (dim - 1) * delay
    if m - theiler - 1 <= 0:
        return np.nan, np.nan, np.nan
    diag_run = np.zeros(2 * m, dtype=np.int64)  # diagonal j - i at index j - i + m: run up to row i - 1
    vert_run = np.zeros(m, dtype=np.int64)  # column j: run up to row i - 1
    close = np.empty(m, dtype=np.int64)
    recur = 0
    on_diag = 0
    on_vert = 0
    for i in range(m):
        close[:] = 1
        close[max(i - theiler, 0):min(i + theiler + 1, m)] = 0
        for a in range(dim):
            xi = x[i + a * delay]
            xa = x[a * delay:a * delay + m]
            for j in range(m):
                close[j] &= abs(xa[j] - xi) <= radius
        diag = diag_run[m - i:2 * m - i]
        for j in range(m):
            c = close[j]
            d = diag[j]
            v = vert_run[j]
            recur += c
            on_diag += (1 - c) * (d >= lmin) * d
            on_vert += (1 - c) * (v >= vmin) * v
            diag[j] = c * (d + 1)
            vert_run[j] = c * (v + 1)
    for k in range(2 * m):
        on_diag += (diag_run[k] >= lmin) * diag_run[k]
    for j in range(m):
        on_vert += (vert_run[j] >= vmin) * vert_run[j]
    if recur == 0:
        return 0.0, np.nan, np.nan
    return recur / ((m - theiler - 1) * (m - theiler)), on_diag / recur, on_vert / recur


@numba.njit(cache=True)
def sample_entropy(x: np.ndarray, order: int, r: float) -> float:
    """Sample entropy ``-ln(A/B)`` of ``x`` with tolerance ``r`` in the units of ``x`` (module docstring).
    Pairs are taken by offset k: templates i and i + k match where no position is r or more apart."""
    if not _all_finite(x):
        return np.nan
    last = x.size - order - 1  # last template start: templates of length order + 1 must fit
    if last < 1:
        return np.nan
    far = np.empty(x.size, dtype=np.int64)
    far_m = np.empty(x.size, dtype=np.int64)
    a_count = 0
    b_count = 0
    for k in range(1, last + 1):
        n = last - k + 1  # template pairs (i, i + k), i < n
        span = n + order
        f = far[:span]
        xa = x[:span]
        xb = x[k:k + span]
        for t in range(span):
            f[t] = abs(xa[t] - xb[t]) >= r
        fm = far_m[:n]
        fm[:] = 0
        for p in range(order):
            fp = f[p:p + n]
            for t in range(n):
                fm[t] += fp[t]
        fo = f[order:order + n]
        for t in range(n):
            b_count += fm[t] == 0
            a_count += (fm[t] + fo[t]) == 0
    if a_count == 0 or b_count == 0:
        return np.nan
    return -math.log(a_count / b_count)


@numba.njit(cache=True)
def perm_entropy(x: np.ndarray, order: int, delay: int) -> float:
    """Normalised permutation entropy of ``x`` in [0, 1] (module docstring)."""
    if not _all_finite(x):
        return np.nan
    n_patterns = 1
    for i in range(2, order + 1):
        n_patterns *= i
    n = x.size - (order - 1) * delay
    if n <= 0:
        return np.nan
    counts = np.zeros(n_patterns, dtype=np.int64)
    for i in range(n):
        code = 0  # Lehmer code of the pattern: sum over a of #{b > a: x_b < x_a} * (order-1-a)!
        for a in range(order):
            smaller = 0
            for b in range(a + 1, order):
                if x[i + b * delay] < x[i + a * delay]:
                    smaller += 1
            code = code * (order - a) + smaller
        counts[code] += 1
    h = 0.0
    for c in counts:
        if c > 0:
            p = c / n
            h -= p * math.log2(p)
    return h / math.log2(n_patterns)


# ----------------------------------------------------------------------------------------------------------
# Rolling drivers: one value per evaluation bar e, on the window ending at e (NaN where e < W).
# ----------------------------------------------------------------------------------------------------------

@numba.njit(cache=True)
def _roll_hurst_rs(ret: np.ndarray, ends: np.ndarray, w: int, min_n: int) -> np.ndarray:
    out = np.full(ends.size, np.nan)
    for q in range(ends.size):
        e = ends[q]
        if e >= w:
            out[q] = hurst_rs(ret[e - w + 1:e + 1], min_n)
    return out


@numba.njit(cache=True)
def _roll_hurst_dfa(ret: np.ndarray, ends: np.ndarray, w: int, min_n: int) -> np.ndarray:
    out = np.full(ends.size, np.nan)
    for q in range(ends.size):
        e = ends[q]
        if e >= w:
            out[q] = hurst_dfa(ret[e - w + 1:e + 1], min_n)
    return out


@numba.njit(cache=True)
def _roll_higuchi(logc: np.ndarray, ends: np.ndarray, w: int, kmax: int) -> np.ndarray:
    out = np.full(ends.size, np.nan)
    for q in range(ends.size):
        e = ends[q]
        if e >= w:
            out[q] = higuchi_fd(logc[e - w:e + 1], kmax)
    return out


@numba.njit(cache=True)
def _roll_katz(logc: np.ndarray, ends: np.ndarray, w: int) -> np.ndarray:
    out = np.full(ends.size, np.nan)
    for q in range(ends.size):
        e = ends[q]
        if e >= w:
            out[q] = katz_fd(logc[e - w:e + 1])
    return out


@numba.njit(cache=True)
def _roll_lyap(ret: np.ndarray, ends: np.ndarray, w: int, dim: int, delay: int, theiler: int,
               traj_len: int) -> np.ndarray:
    out = np.full(ends.size, np.nan)
    for q in range(ends.size):
        e = ends[q]
        if e >= w:
            out[q] = lyap_rosenstein(ret[e - w + 1:e + 1], dim, delay, theiler, traj_len)
    return out


@numba.njit(cache=True)
def _roll_rqa(ret: np.ndarray, ends: np.ndarray, w: int, dim: int, delay: int, radius: float, theiler: int,
              lmin: int, vmin: int) -> np.ndarray:
    out = np.full((ends.size, 3), np.nan)
    for q in range(ends.size):
        e = ends[q]
        if e >= w:
            x = ret[e - w + 1:e + 1]
            if _all_finite(x):
                sd = _std(x)
                if sd > 0.0:
                    out[q, 0], out[q, 1], out[q, 2] = rqa(x, dim, delay, radius * sd, theiler, lmin, vmin)
    return out


@numba.njit(cache=True)
def _roll_sampen(ret: np.ndarray, ends: np.ndarray, w: int, order: int, r: float) -> np.ndarray:
    out = np.full(ends.size, np.nan)
    for q in range(ends.size):
        e = ends[q]
        if e >= w:
            x = ret[e - w + 1:e + 1]
            if _all_finite(x):
                sd = _std(x)
                if sd > 0.0:
                    out[q] = sample_entropy(x, order, r * sd)
    return out


@numba.njit(cache=True)
def _roll_permen(ret: np.ndarray, ends: np.ndarray, w: int, order: int, delay: int) -> np.ndarray:
    out = np.full(ends.size, np.nan)
    for q in range(ends.size):
        e = ends[q]
        if e >= w:
            out[q] = perm_entropy(ret[e - w + 1:e + 1], order, delay)
    return out


@numba.njit(cache=True)
def _roll_corr_dim(ret: np.ndarray, ends: np.ndarray, w: int, dim: int, delay: int, theiler: int,
                   c_lo: float, c_hi: float, mantissa_bits: int) -> np.ndarray:
    """``corr_dim`` at each evaluation bar, with the pair-distance histogram carried from one window to
    the next: pairs with a vector that left the window are subtracted, pairs with a new vector added
    (integer counts, so the result equals a fresh computation); rebuilt when the window moved by more
    than a quarter of its length."""
    out = np.full(ends.size, np.nan)
    hist = np.zeros(_CD_OCTAVES << mantissa_bits, dtype=np.int64)
    d2 = np.empty(w)
    bad = np.zeros(ret.size + 1, dtype=np.int64)  # bad[i] = non-finite returns before i
    for i in range(ret.size):
        bad[i + 1] = bad[i] + (not np.isfinite(ret[i]))
    span = (dim - 1) * delay
    lo_prev = -1
    hi_prev = -1
    for q in range(ends.size):
        e = ends[q]
        if e < w:
            continue
        lo = e - w + 1  # first and last delay vector of the window (vector i starts at return i)
        hi = e - span
        if lo_prev < 0 or lo - lo_prev > w // 4:
            hist[:] = 0
            for j in range(lo + theiler + 1, hi + 1):
                _sq_dists(ret, j, lo, j - theiler, dim, delay, d2)
                _cd_count(d2, j - theiler - lo, mantissa_bits, hist, 1)
        else:
            for i in range(lo_prev, lo):
                if i + theiler + 1 <= hi_prev:
                    _sq_dists(ret, i, i + theiler + 1, hi_prev + 1, dim, delay, d2)
                    _cd_count(d2, hi_prev - i - theiler, mantissa_bits, hist, -1)
            for j in range(hi_prev + 1, hi + 1):
                if j - theiler > lo:
                    _sq_dists(ret, j, lo, j - theiler, dim, delay, d2)
                    _cd_count(d2, j - theiler - lo, mantissa_bits, hist, 1)
        lo_prev = lo
        hi_prev = hi
        if bad[e + 1] - bad[lo] == 0:
            m = hi - lo + 1 - theiler
            out[q] = _cd_fit(hist, m * (m - 1) // 2, mantissa_bits, c_lo, c_hi)
    return out


# ----------------------------------------------------------------------------------------------------------
# The family
# ----------------------------------------------------------------------------------------------------------

def evaluation_points(timestamps: pd.Series, stride_hours: int) -> np.ndarray:
    """Boolean mask of the bars where the measures are evaluated: the first bar of each block of
    ``stride_hours`` hours since 1970-01-01 00:00 UTC (a bar whose block differs from the previous bar's).
    The first bar of the frame is never one; it cannot end a full window anyway."""
    ts = pd.to_datetime(timestamps, utc=True)
    seconds = ((ts - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy(np.int64)
    block = seconds // (3600 * stride_hours)
    mask = np.zeros(block.size, dtype=bool)
    mask[1:] = block[1:] != block[:-1]
    return mask


def _carry(values: np.ndarray, is_eval: np.ndarray) -> np.ndarray:
    """Spread per-evaluation values to every bar: each bar takes the value of the last evaluation at or
    before it (NaN before the first), NaN values included."""
    last = np.cumsum(is_eval) - 1
    out = np.full(is_eval.size, np.nan)
    seen = last >= 0
    out[seen] = values[last[seen]]
    return out


_DESCRIPTIONS: dict[str, str] = {
    "hurst_rs": "Hurst exponent, Anis-Lloyd-Peters corrected rescaled range, of {w} log returns "
                "(0.5 white noise, >0.5 persistent)",
    "hurst_dfa": "DFA-1 scaling exponent alpha of {w} log returns (0.5 white noise, >0.5 persistent)",
    "higuchi_fd": "Higuchi fractal dimension of the path of {w1} log closes (1 smooth, 1.5 random walk, "
                  "2 noise)",
    "katz_fd": "Katz fractal dimension of the path of {w1} log closes",
    "lyap_r": "Rosenstein largest Lyapunov exponent of {w} log returns, 1/bar",
    "corr_dim": "Grassberger-Procaccia correlation dimension of {w} log returns",
    "rqa_rr": "RQA recurrence rate of {w} log returns",
    "rqa_det": "RQA determinism (share of recurrences on diagonal lines) of {w} log returns",
    "rqa_lam": "RQA laminarity (share of recurrences on vertical lines) of {w} log returns",
    "sampen": "sample entropy of {w} log returns, nats",
    "permen": "normalised permutation entropy of {w} log returns, [0, 1]",
}


def _spec(what: str, w: int, cfg: FractalConfig) -> FeatureSpec:
    description = _DESCRIPTIONS[what].format(w=w, w1=w + 1) + (
        f"; evaluated on the first bar of each {cfg.stride_hours}h UTC block, carried forward in between")
    return FeatureSpec(name=f"{PREFIX}_{what}_{w}", family=FAMILY, window=w + 1, source=SOURCE, lag=LAG,
                       description=description)


def compute_fractal(bars: pd.DataFrame, cfg: FractalConfig = FractalConfig()) -> FamilyResult:
    """The fractal family on one symbol's bars (sorted, unique timestamps; gaps left as they are).

    One float column per (measure, window), named ``fr_<what>_<W>`` with ``W`` in log returns, in the order
    of ``cfg.windows`` then of its windows; see the module docstring for what each reads and computes."""
    require_bars(bars)
    started = time.perf_counter()
    close = bars["close"].to_numpy(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        logc = np.where(close > 0, np.log(close), np.nan)
    ret = np.full(close.size, np.nan)
    ret[1:] = logc[1:] - logc[:-1]
    is_eval = evaluation_points(bars["timestamp"], cfg.stride_hours)
    ends = np.flatnonzero(is_eval).astype(np.int64)
    columns: dict[str, np.ndarray] = {}
    specs: list[FeatureSpec] = []

    def add(what: str, w: int, values: np.ndarray) -> None:
        columns[f"{PREFIX}_{what}_{w}"] = _carry(values, is_eval)
        specs.append(_spec(what, w, cfg))

    for measure, wins in cfg.windows.items():
        for w in wins:
            if measure == "hurst_rs":
                add("hurst_rs", w, _roll_hurst_rs(ret, ends, w, cfg.hurst_min_n))
            elif measure == "hurst_dfa":
                add("hurst_dfa", w, _roll_hurst_dfa(ret, ends, w, cfg.hurst_min_n))
            elif measure == "higuchi_fd":
                add("higuchi_fd", w, _roll_higuchi(logc, ends, w, cfg.higuchi_kmax))
            elif measure == "katz_fd":
                add("katz_fd", w, _roll_katz(logc, ends, w))
            elif measure == "lyap_r":
                add("lyap_r", w, _roll_lyap(ret, ends, w, cfg.emb_dim, cfg.delay, cfg.theiler,
                                            cfg.lyap_traj_len))
            elif measure == "corr_dim":
                if not cfg.corr_dim_ok(w):
                    log.warning("fr_corr_dim_%d omitted: %d vector pairs, the smallest fitted C(r) = %g "
                                "would rest on fewer than %d", w, cfg.corr_dim_pairs(w), cfg.cd_c_range[0],
                                cfg.cd_min_pairs)
                    continue
                add("corr_dim", w, _roll_corr_dim(ret, ends, w, cfg.emb_dim, cfg.delay, cfg.theiler,
                                                  cfg.cd_c_range[0], cfg.cd_c_range[1],
                                                  cfg.cd_bins_per_octave.bit_length() - 2))
            elif measure == "rqa":
                rr_det_lam = _roll_rqa(ret, ends, w, cfg.emb_dim, cfg.delay, cfg.rqa_radius, cfg.theiler,
                                       cfg.rqa_lmin, cfg.rqa_vmin)
                for c, what in enumerate(("rqa_rr", "rqa_det", "rqa_lam")):
                    add(what, w, rr_det_lam[:, c])
            elif measure == "sampen":
                add("sampen", w, _roll_sampen(ret, ends, w, cfg.sampen_order, cfg.sampen_r))
            else:
                add("permen", w, _roll_permen(ret, ends, w, cfg.permen_order, cfg.permen_delay))

    frame = pd.DataFrame(columns, index=pd.RangeIndex(len(bars)), dtype=np.float64)
    log.debug("fractal: %d bars, %d evaluations, %d columns, %.2fs", len(bars), ends.size, len(columns),
              time.perf_counter() - started)
    return FamilyResult(frame=frame, specs=specs).check(len(bars))
