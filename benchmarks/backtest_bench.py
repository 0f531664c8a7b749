"""Bar-steps per second (bars × assets) of the backtester, and of vectorbt on the same data where installed.

Usage: OMP_NUM_THREADS=1 python benchmarks/backtest_bench.py [--bars N] [--assets N] [--repeat N]

Cases, on a synthetic random walk (open = previous close): ``targets`` — ``backtest`` with a new random
target on 5% of bars and NaN (hold) elsewhere, 10 bps fees, 2 bps slippage; ``kernel`` — the numba loop
alone on the same inputs (no input checks or result assembly); ``from_signals`` — one asset driven by
entries/exits, against ``vbt.Portfolio.from_signals(price=open, fees, slippage)`` on the same signals
(vectorbt's sizing differs, the work per bar is the same). Best of ``--repeat`` runs after a warm-up call
(numba compilation excluded). Prints figures only; nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Callable

import numpy as np

from cryptopredict.evaluation import backtest as bt


def best_seconds(fn: Callable[[], object], repeat: int) -> float:
    fn()
    best = math.inf
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def synthetic(bars: int, assets: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    close = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.01, (bars, assets)), axis=0))
    open_ = np.vstack([close[:1], close[:-1]])
    targets = np.full((bars, assets), np.nan)
    change = rng.random((bars, assets)) < 0.05
    targets[change] = np.round(rng.uniform(-1.0, 1.0, int(change.sum())), 2)
    return open_, close, targets


def kernel_call(o: np.ndarray, c: np.ndarray, w: np.ndarray, cfg: bt.BacktestConfig) -> Callable[[], object]:
    shape = o.shape
    nan = np.broadcast_to(np.nan, shape)
    zero = np.broadcast_to(0.0, shape)

    def run() -> int:
        return bt._simulate(o, c, w, cfg.fee_bps * 1e-4, cfg.slippage_bps * 1e-4, 0.0, nan, nan, zero,
                            cfg.rebalance_threshold, cfg.initial_equity, np.empty(shape), np.empty(shape),
                            np.zeros(shape), np.zeros(shape), np.zeros(shape), np.full(shape, np.nan),
                            np.empty(shape[0]), np.empty(shape[0]), np.empty(shape[0]))
    return run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bars", type=int, default=1_000_000)
    ap.add_argument("--assets", type=int, default=10, help="assets in the multi-asset case")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    cfg = bt.BacktestConfig(fee_bps=10.0, slippage_bps=2.0)
    try:
        import vectorbt as vbt
    except ImportError:
        vbt = None
    print(f"{os.cpu_count()} CPUs, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
          f"vectorbt {'not installed' if vbt is None else vbt.__version__}")
    print(f"{'case':<34}{'bars x assets':>16}{'M bar-steps/s':>16}{'vs vectorbt':>14}")

    def report(name: str, steps: int, seconds: float, reference: float | None = None) -> None:
        ratio = f"{reference / seconds:13.1f}x" if reference is not None else f"{'':>14}"
        print(f"{name:<34}{steps:>16,}{steps / seconds / 1e6:>16.1f}{ratio}")

    for assets, bars in ((1, args.bars), (args.assets, args.bars // args.assets)):
        o, c, w = synthetic(bars, assets)
        steps = bars * assets
        report(f"backtest, {assets} asset(s)", steps, best_seconds(lambda: bt.backtest(o, c, w, cfg), args.repeat))
        report(f"kernel only, {assets} asset(s)", steps, best_seconds(kernel_call(o, c, w, cfg), args.repeat))

    o, c, _ = synthetic(args.bars, 1)
    rng = np.random.default_rng(1)
    entries = rng.random(args.bars) < 0.02
    exits = rng.random(args.bars) < 0.02
    ours = best_seconds(lambda: bt.from_signals(o[:, 0], c[:, 0], entries=entries, exits=exits, config=cfg),
                        args.repeat)
    theirs = None
    if vbt is not None:
        theirs = best_seconds(lambda: vbt.Portfolio.from_signals(c[:, 0], entries, exits, price=o[:, 0],
                                                                 fees=1e-3, slippage=2e-4).value(), args.repeat)
    report("from_signals, 1 asset", args.bars, ours, theirs)
    if theirs is not None:
        report("vectorbt from_signals + value()", args.bars, theirs)


if __name__ == "__main__":
    main()
