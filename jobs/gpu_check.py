"""GPU check of the deep models: training throughput and peak memory with and without mixed precision and
torch.compile, the CUDA-graph inference path, and a Ray Train fit on every visible GPU.

Usage (from a fresh checkout; no lake needed, the data is synthetic):

    python jobs/gpu_check.py [--steps 300] [--warmup 20] [--models transformer,bilstm,cnn_lstm,gnn]
                             [--configs fp32_eager,amp_eager,fp32_compile,amp_compile]
                             [--batch-size 256] [--gnn-batch-size 32] [--infer-batch-sizes 1,256]
                             [--infer-batches 30] [--infer-amp auto] [--ray-workers N] [--ray-steps 20]
                             [--no-inference] [--no-ray] [--allow-rnn] [--budget-s 220]
                             [--hard-limit-s 300] [--out gpu_check.json] [--cpu-smoke]

What it measures, on synthetic data of the shipped shape (161 features, window 32, 11 symbols; labels that
depend on past features, so the losses fall):

* training, per model x {fp32_eager, amp_eager, fp32_compile, amp_compile}: ``train_net`` for ``--steps``
  optimiser steps (one epoch capped by ``max_steps_per_epoch``, no curriculum); samples/s over the steps
  after ``--warmup`` (the clock starts and stops on a ``torch.cuda.synchronize()``; warm-up seconds, which
  hold the compile, are reported apart), peak memory (``torch.cuda.max_memory_allocated`` after
  ``reset_peak_memory_stats``), the loss on held-out rows after training (must be finite), and for
  compiled runs dynamo's graph and graph-break counts. ``amp`` is the trainer's ``auto``: bf16 where the
  card supports it, else fp16 with a GradScaler. A "sample" is one window for the sequence nets and one
  bar (a graph of every symbol's window) for gnn. The input pipeline alone (CPU window gather + copy to the
  device) is timed too: it bounds what the trainer can reach.
* CUDA-graph inference, per model: ``predict_net`` latency per batch at each ``--infer-batch-sizes`` with
  ``cuda_graphs`` on (torch.compile reduce-overhead) and off, after a warm-up call, and the largest
  difference of the class probabilities between the two against a tolerance for the autocast dtype
  (fp32 1e-3, fp16 1e-2, bf16 3e-2); cudagraph skips reported by inductor are recorded.
* Ray Train: ``fit_with_ray_train`` of a small ensemble (every member, compile and CUDA graphs off) on
  ``--ray-workers`` workers (default: the GPU count, at least 1), one GPU each when CUDA is visible.

Only the ``torch.cuda`` API is used (works on ROCm builds). Every configuration runs under try/except: a
failure is recorded with its message in the table and the JSON and the script goes on; the exit status is
1 when anything failed (0 otherwise). Phases run cheapest first (eager training, CUDA-graph inference,
compiled training, Ray Train); once ``--budget-s`` minus a reserve for Ray Train is spent, remaining cases
are recorded as skipped; at ``--hard-limit-s`` a watchdog records the case in progress as failed, prints
the tables and exits 1. The JSON (``--out``) is rewritten after every case, so a run cut short keeps what
it measured. Dynamo does not trace LSTM/GRU (a graph break at each, so only parts of bilstm, cnn_lstm and
gnn are compiled or CUDA-graphed); ``--allow-rnn`` turns on its experimental RNN support to compare.

Without CUDA the script exits with status 2, unless ``--cpu-smoke``: then the same code paths run on the CPU
with tiny sizes (compile skipped; AMP only where bf16 CPU autocast works; ``cuda_graphs`` is a no-op).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

MODELS = ("transformer", "bilstm", "cnn_lstm", "gnn")
CONFIGS: dict[str, tuple[bool, bool]] = {  # name → (amp, compile)
    "fp32_eager": (False, False),
    "amp_eager": (True, False),
    "fp32_compile": (False, True),
    "amp_compile": (True, True),
}
N_FEATURES, WINDOW, N_SYMBOLS = 161, 32, 11
TOLERANCE = {"float32": 1e-3, "float16": 1e-2, "bfloat16": 3e-2}
RAY_RESERVE_S = 75.0
NO_CUDA_MESSAGE = ("gpu_check: no CUDA/ROCm device visible to torch (torch.cuda.is_available() is False); "
                   "run it on a GPU machine, or pass --cpu-smoke to run the same code paths on the CPU")


# ---------------------------------------------------------------------------------------------- data

@dataclass
class Synthetic:
    """A scaled panel with targets, and (symbol, bar) rows split in time into train and held-out parts."""

    panel: Any
    targets: Any
    train_rows: tuple[np.ndarray, np.ndarray]
    valid_rows: tuple[np.ndarray, np.ndarray]
    valid_sigma: np.ndarray

    def source(self, member: str, rows: tuple[np.ndarray, np.ndarray]) -> Any:
        from cryptopredict.models.ensemble import GRAPH_MEMBERS
        from cryptopredict.training.trainer import GraphSource, SeqSource

        if member in GRAPH_MEMBERS:
            return GraphSource(self.panel, self.targets, rows[1], WINDOW)
        return SeqSource(self.panel, self.targets, rows[0], rows[1], WINDOW)

    def payload(self) -> Any:
        from cryptopredict.models.ensemble import Payload

        return Payload(self.panel, self.targets, self.train_rows, self.valid_rows, self.valid_sigma)


def synthetic_data(n_bars: int, *, n_symbols: int = N_SYMBOLS, n_features: int = N_FEATURES,
                   valid_fraction: float = 0.2, seed: int = 0) -> Synthetic:
    """Hourly bars for ``n_symbols`` (the last one starts ``2 * WINDOW`` bars late, so windows and graphs
    carry padding and dead nodes), through the project's own ``build_panel`` / ``grid_targets``. Class: BUY
    when the mean of f0 over the bar and the 2 before is > 0.3, SELL when < -0.3, else HOLD; log realised
    vol = 0.5 f1 - 4; a ring of correlated pairs (0.8) for the graph net."""
    import pandas as pd

    from cryptopredict.training.windows import build_panel, fit_scaler, grid_targets

    rng = np.random.default_rng(seed)
    times = pd.date_range("2024-01-01", periods=n_bars, freq="h", tz="UTC")
    symbols = [f"S{k:02d}USDT" for k in range(n_symbols)]
    late = min(2 * WINDOW, n_bars // 4)
    frames, labels = [], []
    for k, sym in enumerate(symbols):
        t = times[late:] if k == n_symbols - 1 else times
        f = rng.standard_normal((len(t), n_features)).astype(np.float32)
        m = pd.Series(f[:, 0]).rolling(3, min_periods=1).mean().to_numpy()
        idx = pd.MultiIndex.from_arrays([[sym] * len(t), t], names=["symbol", "timestamp"])
        frames.append(pd.DataFrame(f, index=idx, columns=[f"f{i:03d}" for i in range(n_features)]))
        labels.append(pd.DataFrame({"y": np.where(m > 0.3, 2, np.where(m < -0.3, 0, 1)).astype(float),
                                    "fwd_vol": np.exp(0.5 * f[:, 1] - 4.0),
                                    "sigma": np.abs(rng.standard_normal(len(t))) * 0.01 + 0.005}, index=idx))
    X, lab = pd.concat(frames), pd.concat(labels)
    pairs = [(symbols[k], symbols[(k + 1) % n_symbols]) for k in range(n_symbols)]
    corr = pd.DataFrame({"timestamp": np.repeat(times, len(pairs)),
                         "symbol_a": [a for a, _ in pairs] * n_bars,
                         "symbol_b": [b for _, b in pairs] * n_bars,
                         "corr": 0.8})
    cut = times[int(n_bars * (1 - valid_fraction))]
    is_train = np.asarray(X.index.get_level_values("timestamp") < cut)
    panel = build_panel(X, fit_scaler(X[is_train]), correlations=corr)
    targets = grid_targets(panel, X.index, lab["y"].to_numpy(), lab["fwd_vol"].to_numpy(),
                           lab["sigma"].to_numpy())
    sym, tpos = panel.locate(X.index)
    return Synthetic(panel, targets, (sym[is_train], tpos[is_train]), (sym[~is_train], tpos[~is_train]),
                     lab["sigma"].to_numpy()[~is_train])


# ---------------------------------------------------------------------------------------------- helpers

class Clock:
    """Wall time with a device synchronisation first (CUDA kernels run asynchronously)."""

    def __init__(self, device: Any):
        import torch

        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def __call__(self) -> float:
        self.sync()
        return time.perf_counter()


def error_text(exc: BaseException) -> str:
    tb = traceback.format_exception(exc)
    text = f"{type(exc).__name__}: {exc}".strip()
    where = "".join(tb[-3:-1]).strip().replace("\n", " | ") if len(tb) > 2 else ""
    return (text[:1500] + (f"  [at {where[-400:]}]" if where else ""))


def dynamo_counts() -> dict[str, int]:
    try:
        from torch._dynamo.utils import counters
    except ImportError:  # pragma: no cover - torch without dynamo
        return {}
    # torch 2.13 files most graph breaks (e.g. "Dynamo does not support RNN, GRU, or LSTM") under
    # "unimplemented", the rest under "graph_break"
    breaks = sum(counters["graph_break"].values()) + sum(counters["unimplemented"].values())
    return {"unique_graphs": int(counters["stats"]["unique_graphs"]), "graph_breaks": int(breaks),
            "cudagraph_skips": int(counters["inductor"]["cudagraph_skips"])}


def graph_break_reasons(limit: int = 3) -> list[str]:
    try:
        from torch._dynamo.utils import counters
    except ImportError:  # pragma: no cover
        return []
    reasons = counters["graph_break"] + counters["unimplemented"]
    return [str(r).strip().split("\n")[0][:200] for r, _ in reasons.most_common(limit)]


def release(device: Any) -> None:
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def fmt(x: Any, spec: str = ".1f") -> str:
    return format(x, spec) if finite(x) else "-"


# ---------------------------------------------------------------------------------------------- training

def train_case(member: str, config: str, data: Synthetic, args: argparse.Namespace, device: Any,
               amp_mode: str) -> tuple[dict[str, Any], Any]:
    """One training run; returns its record and the trained net (eager nets only, for inference)."""
    import torch

    from cryptopredict.models.ensemble import EnsembleSettings, build_net
    from cryptopredict.training.trainer import TrainConfig, amp_dtype, evaluate_loss, train_net, use_compile

    amp, compiled = CONFIGS[config]
    bs = args.gnn_batch_size if member == "gnn" else args.batch_size
    cfg = TrainConfig(epochs=1, batch_size=bs, max_steps_per_epoch=args.steps, curriculum_epochs=0,
                      amp=amp_mode if amp else "off", compile="on" if compiled else "off", cuda_graphs=False,
                      device=str(device), seed=args.seed)
    dtype = amp_dtype(cfg, device)
    rec: dict[str, Any] = {"model": member, "config": config, "batch_size": bs,
                           "dtype": str(dtype).replace("torch.", "") if dtype else "float32",
                           "compile": use_compile(cfg, device),
                           "unit": "graphs" if member == "gnn" else "windows"}
    train_src, eval_src = data.source(member, data.train_rows), data.source(member, data.valid_rows)
    steps = min(math.ceil(train_src.n / bs), args.steps)
    warmup = max(1, min(args.warmup, steps - 1))
    rec.update(steps=steps, warmup_steps=warmup, timed_steps=steps - warmup)
    if steps < args.steps:
        rec["note"] = f"only {train_src.n} training samples: {steps} steps instead of {args.steps}"
    clock = Clock(device)
    if compiled:
        torch._dynamo.reset()
    before = dynamo_counts()
    torch.manual_seed(args.seed)
    net = build_net(member, N_FEATURES, EnsembleSettings(members=[member], window=WINDOW)).to(device)
    rec["parameters"] = sum(p.numel() for p in net.parameters())
    marks: dict[str, float] = {}
    calls = [0]

    def progress(_: int) -> None:
        calls[0] += 1
        if calls[0] == warmup:
            marks["warm"] = clock()
        elif calls[0] == steps:
            marks["end"] = clock()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = clock()
    res = train_net(net, train_src, None, cfg, device=device, progress=progress)
    marks.setdefault("end", clock())
    if device.type == "cuda":
        rec["peak_mem_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        rec["peak_mem_mib"] = None  # torch has no allocator statistics on the CPU
    timed = marks["end"] - marks["warm"]
    rec["warmup_s"] = marks["warm"] - started
    rec["timed_s"] = timed
    rec["samples_per_s"] = (steps - warmup) * bs / timed if timed > 0 else float("nan")
    if member == "gnn":
        rec["node_samples_per_s"] = rec["samples_per_s"] * N_SYMBOLS
    row = res.history[-1]
    rec["train_loss_epoch"] = float(row["train_direction"] + cfg.vol_weight * row["train_vol"]
                                    + cfg.calib_weight * row["train_calib"])
    net.load_state_dict(res.state_dict)
    limited = _first(eval_src, args.eval_samples)
    rec["final_loss"] = float(evaluate_loss(net, limited, cfg, device))
    rec["loss_finite"] = finite(rec["final_loss"]) and finite(rec["train_loss_epoch"])
    if compiled:
        after = dynamo_counts()
        rec["dynamo"] = {k: after.get(k, 0) - before.get(k, 0) for k in after}
        rec["dynamo"]["top_graph_breaks"] = graph_break_reasons()
    rec["status"] = "ok" if rec["loss_finite"] else "error"
    if not rec["loss_finite"]:
        rec["error"] = f"non-finite loss (train {rec['train_loss_epoch']}, held-out {rec['final_loss']})"
    return rec, (net if not compiled else None)


class _Subset:
    """The first ``n`` samples of a source (same batches, fewer of them)."""

    def __init__(self, source: Any, n: int):
        self.source, self.n = source, min(n, source.n)
        self.calm = source.calm[: self.n]

    def batch(self, idx: np.ndarray) -> Any:
        return self.source.batch(idx)


def _first(source: Any, n: int) -> Any:
    return source if source.n <= n else _Subset(source, n)


def input_pipeline(member: str, data: Synthetic, args: argparse.Namespace, device: Any) -> dict[str, Any]:
    """Samples/s of the trainer's input path alone: CPU window gather + copy to the device."""
    src = data.source(member, data.train_rows)
    bs = args.gnn_batch_size if member == "gnn" else args.batch_size
    n_batches = max(1, min(args.input_batches, src.n // bs))
    rng = np.random.default_rng(args.seed)
    clock = Clock(device)
    order = rng.permutation(src.n)
    for b in range(n_batches + 1):
        if b == 1:
            t0 = clock()
        inputs, y, lv = src.batch(order[(b % n_batches) * bs:(b % n_batches + 1) * bs])
        [t.to(device, non_blocking=True) for t in (*inputs, y, lv)]
    seconds = clock() - t0
    return {"model": member, "batch_size": bs, "batches": n_batches, "status": "ok",
            "samples_per_s": n_batches * bs / seconds if seconds > 0 else float("nan")}


# ---------------------------------------------------------------------------------------------- inference

def inference_case(member: str, net: Any, batch: int, data: Synthetic, args: argparse.Namespace,
                   device: Any) -> dict[str, Any]:
    """``predict_net`` latency per batch with cuda_graphs off and on, and the largest probability gap."""
    import torch

    from cryptopredict.training.trainer import TrainConfig, amp_dtype, predict_net

    rows = (np.concatenate([data.train_rows[0], data.valid_rows[0]]),
            np.concatenate([data.train_rows[1], data.valid_rows[1]]))
    full = data.source(member, rows)
    n = min(full.n, batch * args.infer_batches)
    timed_src = _first(full, n)
    warm_src = _first(full, min(full.n, 3 * batch))
    clock = Clock(device)
    net = net.to(device).eval()
    rec: dict[str, Any] = {"model": member, "batch_size": batch, "timed_batches": math.ceil(n / batch),
                           "unit": "graphs" if member == "gnn" else "windows",
                           "cuda_graphs_effective": device.type == "cuda"}
    outs = {}
    for graphs in (False, True):
        key = "on" if graphs else "off"
        cfg = TrainConfig(batch_size=batch, cuda_graphs=graphs, amp=args.infer_amp, device=str(device))
        rec["dtype"] = str(amp_dtype(cfg, device) or torch.float32).replace("torch.", "")
        try:
            if graphs:
                torch._dynamo.reset()
            before = dynamo_counts()
            t0 = clock()
            predict_net(net, warm_src, cfg, device)
            rec[f"first_call_s_{key}"] = clock() - t0
            t0 = clock()
            outs[key] = predict_net(net, timed_src, cfg, device)
            seconds = clock() - t0
            rec[f"latency_ms_{key}"] = 1e3 * seconds / rec["timed_batches"]
            rec[f"samples_per_s_{key}"] = n / seconds if seconds > 0 else float("nan")
            if graphs:
                after = dynamo_counts()
                rec["dynamo"] = {k: after.get(k, 0) - before.get(k, 0) for k in after}
        except Exception as exc:  # noqa: BLE001 - recorded, not hidden: the case fails below
            rec[f"error_{key}"] = error_text(exc)
            torch._dynamo.reset()
    if "off" in outs and "on" in outs:
        gap = float(np.max(np.abs(outs["off"].proba - outs["on"].proba)))
        rec["max_abs_diff_proba"] = gap
        rec["max_abs_diff_log_vol"] = float(np.max(np.abs(outs["off"].log_vol - outs["on"].log_vol)))
        rec["tolerance"] = TOLERANCE.get(rec["dtype"], 3e-2)
        rec["match"] = bool(gap <= rec["tolerance"])
        rec["finite"] = bool(np.isfinite(outs["on"].proba).all() and np.isfinite(outs["off"].proba).all())
        if finite(rec.get("latency_ms_on")) and rec.get("latency_ms_on"):
            rec["speedup"] = rec["latency_ms_off"] / rec["latency_ms_on"]
    errors = [rec[k] for k in ("error_off", "error_on") if k in rec]
    if errors:
        rec["status"], rec["error"] = "error", " / ".join(errors)
    elif not rec.get("match") or not rec.get("finite"):
        rec["status"] = "error"
        rec["error"] = (f"cuda_graphs on vs off: max |Δproba| {rec['max_abs_diff_proba']:.3g} > tolerance "
                        f"{rec['tolerance']:.0e}" if not rec.get("match") else "non-finite probabilities")
    else:
        rec["status"] = "ok"
    return rec


# ---------------------------------------------------------------------------------------------- Ray Train

def ray_case(args: argparse.Namespace, device: Any, data: Synthetic) -> dict[str, Any]:
    import ray
    import torch

    from cryptopredict.models.ensemble import EnsembleSettings
    from cryptopredict.parallel import LOCAL_RAY_ENV
    from cryptopredict.training.distributed import fit_with_ray_train

    n_gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    workers = args.ray_workers or max(1, n_gpus)
    use_gpu = n_gpus > 0
    rec: dict[str, Any] = {"workers": workers, "use_gpu": use_gpu, "members": list(MODELS)}
    started = time.perf_counter()
    ours = False
    if not ray.is_initialized():
        for var, value in LOCAL_RAY_ENV.items():
            os.environ.setdefault(var, value)
        address = os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, log_to_driver=False)
        else:  # like parallel.connect_ray, plus the GPUs torch sees (Ray's own detection may miss ROCm)
            ray.init(address="local", num_cpus=os.cpu_count(), num_gpus=n_gpus,
                     object_store_memory=512 * 1024**2, include_dashboard=False, log_to_driver=False)
        ours = True
    rec["ray_init_s"] = time.perf_counter() - started
    try:
        settings = EnsembleSettings(
            window=WINDOW, backend="ray", num_workers=workers, use_gpu=use_gpu,
            train={"epochs": 1, "batch_size": args.ray_batch_size, "max_steps_per_epoch": args.ray_steps,
                   "curriculum_epochs": 0, "compile": "off", "cuda_graphs": False, "device": "auto",
                   "seed": args.seed},
            member_train={"gnn": {"batch_size": max(1, args.ray_batch_size // 8)}},
            fusion={"steps": args.ray_fusion_steps, "num_samples": 16, "min_calib_rows": 30})
        with tempfile.TemporaryDirectory(prefix="gpu-check-ray-") as tmp:
            settings.storage_path = str(Path(tmp) / "ray")
            t0 = time.perf_counter()
            summary = fit_with_ray_train(data.payload(), settings, Path(tmp) / "model")
            rec["fit_s"] = time.perf_counter() - t0
            rec["files"] = sorted(p.name for p in (Path(tmp) / "model").iterdir())
        keep = ("best_valid_loss", "samples_per_s", "seconds", "train_samples")
        rec["members_summary"] = {m: {k: s[k] for k in keep} for m, s in summary.items() if m in MODELS}
        rec["ray_train_s"] = summary.get("ray_train", {}).get("seconds")
        bad = [m for m, s in rec["members_summary"].items() if not finite(float(s["best_valid_loss"]))]
        missing = [m for m in MODELS if m not in rec["members_summary"]]
        if bad or missing:
            rec["status"], rec["error"] = "error", f"non-finite valid loss {bad}, missing members {missing}"
        else:
            rec["status"] = "ok"
    finally:
        if ours:
            ray.shutdown()
    rec["total_s"] = time.perf_counter() - started
    return rec


# ---------------------------------------------------------------------------------------------- report

def infer_note(r: dict[str, Any]) -> str:
    if r.get("error"):
        return r["error"]
    if not r.get("cuda_graphs_effective"):
        return "cuda_graphs is a no-op off CUDA"
    d = r.get("dynamo") or {}
    return (f"graphs {d.get('unique_graphs')}, breaks {d.get('graph_breaks')}, "
            f"cudagraph skips {d.get('cudagraph_skips')}")


def print_tables(report: dict[str, Any]) -> None:
    dev = report["device"]
    print(f"\n{dev['name']} | torch {dev['torch']} | cuda {dev.get('cuda')} hip {dev.get('hip')} | "
          f"{'CPU smoke' if report['cpu_smoke'] else 'GPU'} | steps {report['args']['steps']}")
    print(f"\n{'model':<12}{'config':<14}{'dtype':<10}{'status':<9}{'samples/s':>11}{'peak MiB':>10}"
          f"{'warm-up s':>11}{'loss':>9}  note")
    for r in report["training"]:
        note = r.get("error") or r.get("note") or ""
        if r.get("dynamo") and r["status"] == "ok":
            d = r["dynamo"]
            why = f" ({d['top_graph_breaks'][0][:70]})" if d.get("top_graph_breaks") else ""
            note = f"graphs {d.get('unique_graphs')}, breaks {d.get('graph_breaks')}{why} {note}"
        print(f"{r['model']:<12}{r['config']:<14}{r.get('dtype', '-'):<10}{r['status']:<9}"
              f"{fmt(r.get('samples_per_s'), ',.0f'):>11}{fmt(r.get('peak_mem_mib'), ',.0f'):>10}"
              f"{fmt(r.get('warmup_s')):>11}{fmt(r.get('final_loss'), '.3f'):>9}  {note[:160]}")
    if report["input_pipeline"]:
        print("\ninput path alone (CPU window gather + copy to device), samples/s: " + ", ".join(
            f"{r['model']} {fmt(r.get('samples_per_s'), ',.0f')}" for r in report["input_pipeline"]))
    if report["inference"]:
        print(f"\n{'model':<12}{'batch':>6}  {'dtype':<10}{'status':<9}{'off ms':>9}{'on ms':>9}"
              f"{'speedup':>9}{'1st call on s':>15}{'max|dp|':>10}{'tol':>8}  note")
        for r in report["inference"]:
            print(f"{r['model']:<12}{r['batch_size']:>6}  {r.get('dtype', '-'):<10}{r['status']:<9}"
                  f"{fmt(r.get('latency_ms_off'), '.2f'):>9}{fmt(r.get('latency_ms_on'), '.2f'):>9}"
                  f"{fmt(r.get('speedup'), '.2f'):>9}{fmt(r.get('first_call_s_on'), '.1f'):>15}"
                  f"{fmt(r.get('max_abs_diff_proba'), '.1e'):>10}{fmt(r.get('tolerance'), '.0e'):>8}  "
                  f"{infer_note(r)[:160]}")
    ray_rec = report.get("ray_train")
    if ray_rec:
        print(f"\nRay Train: status {ray_rec['status']}, {ray_rec.get('workers')} worker(s), use_gpu "
              f"{ray_rec.get('use_gpu')}, init {fmt(ray_rec.get('ray_init_s'))} s, "
              f"fit {fmt(ray_rec.get('fit_s'))} s"
              + (f", error: {ray_rec['error'][:300]}" if ray_rec.get("error") else ""))
    if report.get("aborted"):
        print(f"\nABORTED: {report['aborted']}")
    print(f"\n{report['failures']} failure(s), {report['skipped']} skipped, {report['seconds_total']:.0f} s; "
          f"JSON: {report['out']}")


# ---------------------------------------------------------------------------------------------- main

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300, help="optimiser steps per training run (>= 2)")
    ap.add_argument("--warmup", type=int, default=20, help="steps before the clock starts (hold the compile)")
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of these")
    ap.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset of these")
    ap.add_argument("--batch-size", type=int, default=None, help="sequence nets (default 256; smoke 32)")
    ap.add_argument("--gnn-batch-size", type=int, default=None, help="graphs per batch (default 32; smoke 4)")
    ap.add_argument("--eval-samples", type=int, default=None, help="held-out samples for the final loss")
    ap.add_argument("--input-batches", type=int, default=20, help="batches timed for the input path")
    ap.add_argument("--infer-batch-sizes", default=None, help="latency batches (default 1,256; smoke 1,8)")
    ap.add_argument("--infer-batches", type=int, default=None, help="timed batches per latency (default 30)")
    ap.add_argument("--infer-amp", default="auto", choices=["auto", "off", "bf16", "fp16"])
    ap.add_argument("--no-inference", action="store_true")
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--ray-workers", type=int, default=None, help="default: GPU count, at least 1")
    ap.add_argument("--ray-steps", type=int, default=None, help="steps per member (default 20; smoke 2)")
    ap.add_argument("--ray-batch-size", type=int, default=64)
    ap.add_argument("--ray-fusion-steps", type=int, default=None, help="SVI steps (default 100; smoke 20)")
    ap.add_argument("--budget-s", type=float, default=220.0,
                    help=f"wall budget; training/inference cases stop {RAY_RESERVE_S:.0f} s before it "
                         "when Ray Train is on, and remaining ones are recorded as skipped")
    ap.add_argument("--allow-rnn", action="store_true",
                    help="torch._dynamo.config.allow_rnn = True (experimental: dynamo otherwise breaks the "
                         "graph at every LSTM/GRU, i.e. in bilstm, cnn_lstm and gnn)")
    ap.add_argument("--hard-limit-s", type=float, default=300.0,
                    help="abort (exit 1) at this wall time, recording the case in progress as failed")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="gpu_check.json")
    ap.add_argument("--cpu-smoke", action="store_true",
                    help="no GPU: run every code path on the CPU, tiny sizes")
    args = ap.parse_args(argv)
    smoke = args.cpu_smoke
    args.batch_size = args.batch_size or (32 if smoke else 256)
    args.gnn_batch_size = args.gnn_batch_size or (4 if smoke else 32)
    args.eval_samples = args.eval_samples or (64 if smoke else 4096)
    sizes = args.infer_batch_sizes or ("1,8" if smoke else "1,256")
    args.infer_batch_sizes = [int(b) for b in sizes.split(",")]
    args.infer_batches = args.infer_batches or (2 if smoke else 30)
    args.ray_steps = args.ray_steps or (2 if smoke else 20)
    args.ray_fusion_steps = args.ray_fusion_steps or (20 if smoke else 100)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [m for m in args.models if m not in MODELS] + [c for c in args.configs if c not in CONFIGS]
    if unknown:
        ap.error(f"unknown models/configs {unknown}")
    if args.steps < 2:
        ap.error("--steps must be >= 2 (one warm-up step, one timed)")
    return args


def cpu_bf16_autocast_works() -> bool:
    import torch

    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = torch.nn.Linear(4, 4)(torch.randn(2, 4))
        return y.dtype == torch.bfloat16
    except Exception:  # noqa: BLE001 - a probe: any failure means "no bf16 autocast here"
        return False


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if not torch.cuda.is_available() and not args.cpu_smoke:
        print(NO_CUDA_MESSAGE, file=sys.stderr)
        return 2
    started = time.perf_counter()
    if args.allow_rnn:
        import torch._dynamo

        torch._dynamo.config.allow_rnn = True
    device = torch.device("cpu" if args.cpu_smoke else "cuda")
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        dev = {"name": torch.cuda.get_device_name(device), "count": torch.cuda.device_count(),
               "total_mem_mib": props.total_memory / 2**20,
               "capability": list(torch.cuda.get_device_capability(device)),
               "bf16_supported": torch.cuda.is_bf16_supported(),
               "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
               "tf32_cudnn": torch.backends.cudnn.allow_tf32}
        amp_mode = "auto"  # the trainer's choice: bf16 where supported, else fp16 + GradScaler
    else:
        dev = {"name": f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
               "count": 0, "threads": torch.get_num_threads(), "bf16_autocast": cpu_bf16_autocast_works()}
        amp_mode = "bf16"
    dev.update(type=device.type, torch=torch.__version__, cuda=torch.version.cuda,
               hip=getattr(torch.version, "hip", None), python=platform.python_version())
    out = Path(args.out)
    report: dict[str, Any] = {"device": dev, "cpu_smoke": args.cpu_smoke, "args": vars(args),
                              "started": datetime.now(UTC).isoformat(timespec="seconds"), "out": str(out),
                              "training": [], "input_pipeline": [], "inference": [], "ray_train": None,
                              "failures": 0, "skipped": 0, "seconds_total": 0.0}

    def save() -> None:
        report["seconds_total"] = time.perf_counter() - started
        cases = [*report["training"], *report["inference"], report["ray_train"] or {}]
        report["failures"] = sum(r.get("status") == "error" for r in cases) + bool(report.get("aborted"))
        report["skipped"] = sum(r.get("status") == "skipped" for r in cases)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2, default=float))

    deadline = started + args.budget_s - (0.0 if args.no_ray else RAY_RESERVE_S)
    current: dict[str, Any] = {}

    def abort() -> None:
        """The hard limit: record the case in progress as failed, write everything, exit 1 at once."""
        msg = f"hard limit (--hard-limit-s {args.hard_limit_s:.0f}) reached"
        try:
            msg += " during this case" if current else " between cases"
            if current:
                section, base = current["section"], current["base"]
                if section == "ray_train":
                    report["ray_train"] = {**base, "status": "error", "error": msg}
                else:
                    report[section].append({**base, "status": "error", "error": msg})
            report["aborted"] = msg
            save()
            print_tables(report)
        finally:
            print(f"gpu_check: {msg}; exiting", file=sys.stderr)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(1)

    watchdog = threading.Timer(args.hard_limit_s, abort)
    watchdog.daemon = True
    watchdog.start()

    def run(section: str, base: dict[str, Any], fn: Callable[[], Any], why_skip: str | None = None) -> Any:
        """One case under try/except; its record (ok / error / skipped) lands in ``report[section]``."""
        rec, extra = dict(base), None
        if why_skip is None and time.perf_counter() > deadline:
            why_skip = f"time budget (--budget-s {args.budget_s:.0f}) spent"
        if why_skip:
            rec.update(status="skipped", error=f"skipped: {why_skip}")
        else:
            current.update(section=section, base=base)
            try:
                got = fn()
                rec, extra = got if isinstance(got, tuple) else (got, None)
            except Exception as exc:  # noqa: BLE001 - recorded in the table and JSON; exit 1 at the end
                rec.update(status="error", error=error_text(exc))
                torch._dynamo.reset()
                release(device)
            current.clear()
        report[section].append(rec)
        save()
        print(f"[{time.perf_counter() - started:6.1f}s] {section} {' '.join(str(v) for v in base.values())}: "
              f"{rec['status']}" + (f" ({rec['error'][:200]})" if rec.get("error") else ""), flush=True)
        return extra

    n_bars = max(math.ceil(args.steps * args.batch_size / (N_SYMBOLS - 1)), args.steps * args.gnn_batch_size,
                 300 if args.cpu_smoke else 2000)
    n_bars = math.ceil((n_bars + 3 * WINDOW) / 0.8)
    t0 = time.perf_counter()
    data = synthetic_data(n_bars, seed=args.seed)
    report["data"] = {"bars": n_bars, "symbols": N_SYMBOLS, "features": N_FEATURES, "window": WINDOW,
                      "train_rows": len(data.train_rows[0]), "valid_rows": len(data.valid_rows[0]),
                      "seconds": time.perf_counter() - t0}
    print(f"synthetic panel: {n_bars} bars x {N_SYMBOLS} symbols x {N_FEATURES} features "
          f"({report['data']['seconds']:.1f} s); device {dev['name']}", flush=True)

    nets: dict[str, Any] = {}
    eager = [c for c in args.configs if not CONFIGS[c][1]]
    compiled = [c for c in args.configs if CONFIGS[c][1]]
    # 1. eager training (cheap) and the input path
    for member in args.models:
        for config in eager:
            skip = None
            if CONFIGS[config][0] and device.type == "cpu" and not dev.get("bf16_autocast"):
                skip = "bf16 CPU autocast does not work on this machine"
            net = run("training", {"model": member, "config": config},
                      lambda m=member, c=config: train_case(m, c, data, args, device, amp_mode), skip)
            if net is not None and config == "fp32_eager":
                nets[member] = net.cpu()
            release(device)
        run("input_pipeline", {"model": member}, lambda m=member: input_pipeline(m, data, args, device))
    # 2. CUDA-graph inference (on a trained fp32 net where there is one)
    if not args.no_inference:
        for member in args.models:
            for batch in args.infer_batch_sizes:
                def infer(m: str = member, b: int = batch) -> dict[str, Any]:
                    from cryptopredict.models.ensemble import EnsembleSettings, build_net

                    net = nets.get(m)
                    if net is None:
                        torch.manual_seed(args.seed)
                        net = build_net(m, N_FEATURES, EnsembleSettings(members=[m], window=WINDOW))
                    return inference_case(m, net, b, data, args, device)
                run("inference", {"model": member, "batch_size": batch}, infer)
                release(device)
    # 3. compiled training (compile time counts: last of the per-model phases)
    for member in args.models:
        for config in compiled:
            skip = None
            if device.type == "cpu":
                skip = "--cpu-smoke: torch.compile is not run on the CPU (minutes of compile, no speed-up)"
            run("training", {"model": member, "config": config},
                lambda m=member, c=config: train_case(m, c, data, args, device, amp_mode), skip)
            release(device)
    # 4. Ray Train
    if not args.no_ray:
        current.update(section="ray_train", base={})
        try:
            ray_data = synthetic_data(400 if args.cpu_smoke else 1500, seed=args.seed + 1)
            report["ray_train"] = ray_case(args, device, ray_data)
        except Exception as exc:  # noqa: BLE001 - recorded in the table and JSON; exit status 1 at the end
            report["ray_train"] = {"status": "error", "error": error_text(exc)}
        current.clear()
        save()
        print(f"[{time.perf_counter() - started:6.1f}s] ray_train: {report['ray_train']['status']}",
              flush=True)
    watchdog.cancel()
    save()
    print_tables(report)
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
