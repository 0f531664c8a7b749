"""Training samples/s per deep model on the CPU, inference latency at batch 1 and 256, and Ray Train's
overhead against the plain in-process loop.

Usage: OMP_NUM_THREADS=1 python benchmarks/train_bench.py [--threads 1] [--steps 12] [--warmup 3]
           [--batch-size 64] [--gnn-batch-size 8] [--models transformer,bilstm,cnn_lstm,gnn]
           [--latency-batches 1,256] [--latency-repeats 30] [--fit-train-rows 1536] [--fit-members ...]
           [--ray-workers 1,2] [--no-ray]

Data: the synthetic panel of ``jobs/gpu_check.py`` (161 features, window 32, 11 symbols, labels that
depend on past features), through the project's ``build_panel`` / ``grid_targets``.

* training: ``train_net`` for ``--steps`` steps (no curriculum, fp32, no compile: the CPU defaults);
  samples/s over the steps after ``--warmup``. A sample is a window (sequence nets) or a bar's graph of
  every symbol's window (gnn).
* inference: ``predict_net`` per-batch latency after a warm-up call, and samples/s, at each
  ``--latency-batches`` size; the last column is the throughput gain of that batch size over batch 1.
* Ray Train overhead: one small ensemble fit (every member, one epoch of ``--fit-train-rows`` rows, the
  fusion, the model files) by ``fit_components`` in this process and by ``fit_with_ray_train`` with each
  ``--ray-workers`` count; wall seconds and the ratio to in-process. Data-parallel workers split the same
  rows, so every run does the same total training work. Ray is started once, the way the project does
  (``parallel.connect_ray``: local, loopback, no dashboard), its start-up is shown apart and it is shut
  down at the end.

Prints figures only; nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def _gpu_check() -> ModuleType:
    """``jobs/gpu_check.py`` (not a package) for its synthetic data and timed training case."""
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "jobs" / "gpu_check.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up while the class is created
    spec.loader.exec_module(module)
    return module


gc_job = _gpu_check()


def training_figures(args: argparse.Namespace, data: Any) -> list[dict[str, Any]]:
    case_args = argparse.Namespace(steps=args.steps, warmup=args.warmup, batch_size=args.batch_size,
                                   gnn_batch_size=args.gnn_batch_size, seed=0, eval_samples=64)
    rows = []
    for member in args.models:
        rec, _ = gc_job.train_case(member, "fp32_eager", data, case_args, torch.device("cpu"), "off")
        rows.append(rec)
    return rows


def latency(member: str, net: torch.nn.Module, batch: int, repeats: int, data: Any) -> dict[str, float]:
    from cryptopredict.training.trainer import TrainConfig, predict_net

    rows = (np.concatenate([data.train_rows[0], data.valid_rows[0]]),
            np.concatenate([data.train_rows[1], data.valid_rows[1]]))
    full = data.source(member, rows)
    n = min(full.n, batch * repeats)
    cfg = TrainConfig(batch_size=batch, device="cpu")
    predict_net(net, gc_job._first(full, min(full.n, batch)), cfg, torch.device("cpu"))
    t0 = time.perf_counter()
    predict_net(net, gc_job._first(full, n), cfg, torch.device("cpu"))
    seconds = time.perf_counter() - t0
    batches = math.ceil(n / batch)
    return {"ms": 1e3 * seconds / batches, "samples_per_s": n / seconds, "batches": batches}


def fit_payload(data: Any, train_rows: int) -> Any:
    from cryptopredict.models.ensemble import _recent

    payload = data.payload()
    payload.train_rows = _recent(payload.train_rows, train_rows)
    return payload


def fit_settings(args: argparse.Namespace, backend: str, workers: int) -> Any:
    from cryptopredict.models.ensemble import EnsembleSettings

    return EnsembleSettings(
        members=args.fit_members, window=gc_job.WINDOW, backend=backend, num_workers=workers, use_gpu=False,
        train={"epochs": 1, "batch_size": args.batch_size, "curriculum_epochs": 0, "device": "cpu",
               "compile": "off", "amp": "off", "seed": 0},
        member_train={"gnn": {"batch_size": args.gnn_batch_size}} if "gnn" in args.fit_members else {},
        fusion={"steps": args.fusion_steps, "num_samples": 16, "min_calib_rows": 30})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1, help="torch threads in this process")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--gnn-batch-size", type=int, default=8, help="graphs (bars of 11 symbols) per batch")
    ap.add_argument("--models", default=",".join(gc_job.MODELS))
    ap.add_argument("--latency-batches", default="1,256")
    ap.add_argument("--latency-repeats", type=int, default=30,
                    help="timed batches at batch 1 (at batch b: max(3, repeats // b))")
    ap.add_argument("--bars", type=int, default=400, help="bars of the synthetic panel")
    ap.add_argument("--fit-train-rows", type=int, default=1536, help="most recent training rows of the fit")
    ap.add_argument("--fit-members", default=",".join(gc_job.MODELS))
    ap.add_argument("--fusion-steps", type=int, default=100)
    ap.add_argument("--ray-workers", default="1,2")
    ap.add_argument("--no-ray", action="store_true")
    args = ap.parse_args()
    args.models = args.models.split(",")
    args.fit_members = args.fit_members.split(",")
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    print(f"{os.cpu_count()} CPUs, torch {torch.__version__} with {torch.get_num_threads()} thread(s), "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    t0 = time.perf_counter()
    data = gc_job.synthetic_data(args.bars)
    print(f"synthetic panel: {args.bars} bars x {gc_job.N_SYMBOLS} symbols x {gc_job.N_FEATURES} features, "
          f"window {gc_job.WINDOW} ({time.perf_counter() - t0:.1f} s)")

    # -- training -------------------------------------------------------------------------------------
    print(f"\ntraining, fp32 eager, {args.steps} steps ({args.warmup} warm-up)")
    print(f"{'model':<12}{'params':>9}{'batch':>7}{'samples/s':>11}{'ms/step':>9}{'vs cnn_lstm':>13}  unit")
    train_rows = training_figures(args, data)
    ref = next((r["samples_per_s"] for r in train_rows if r["model"] == "cnn_lstm"), None)
    for r in train_rows:
        ratio = f"{r['samples_per_s'] / ref:12.2f}x" if ref else f"{'':>13}"
        print(f"{r['model']:<12}{r['parameters']:>9,}{r['batch_size']:>7}{r['samples_per_s']:>11,.0f}"
              f"{1e3 * r['batch_size'] / r['samples_per_s']:>9.1f}{ratio}  {r['unit']}")

    # -- inference ------------------------------------------------------------------------------------
    from cryptopredict.models.ensemble import EnsembleSettings, build_net

    batches = [int(b) for b in args.latency_batches.split(",")]
    print("\ninference (predict_net, fp32, eval mode): ms per batch | samples/s | throughput vs batch 1")
    print(f"{'model':<12}" + "".join(f"{f'b={b} ms':>12}{'samples/s':>11}{'gain':>8}" for b in batches))
    for member in args.models:
        torch.manual_seed(0)
        net = build_net(member, gc_job.N_FEATURES, EnsembleSettings(members=[member], window=gc_job.WINDOW))
        line, base = f"{member:<12}", None
        for b in batches:
            repeats = args.latency_repeats if b == 1 else max(3, args.latency_repeats // b)
            fig = latency(member, net, b, repeats, data)
            base = base or fig["samples_per_s"]
            line += f"{fig['ms']:>12.2f}{fig['samples_per_s']:>11,.0f}{fig['samples_per_s'] / base:>7.1f}x"
        print(line, flush=True)

    # -- Ray Train overhead ---------------------------------------------------------------------------
    from cryptopredict.models.ensemble import fit_components

    payload = fit_payload(data, args.fit_train_rows)
    print(f"\nsmall ensemble fit ({'+'.join(args.fit_members)}; {len(payload.train_rows[0])} training rows, "
          f"{len(payload.valid_rows[0])} validation rows, 1 epoch, fusion {args.fusion_steps} SVI steps)")
    print(f"{'backend':<26}{'wall s':>9}{'vs in-process':>15}{'member train s':>16}")
    with tempfile.TemporaryDirectory(prefix="train-bench-") as tmp:
        t0 = time.perf_counter()
        summary = fit_components(payload, fit_settings(args, "local", 1), Path(tmp) / "local")
        local_s = time.perf_counter() - t0
        member_s = sum(s["seconds"] for m, s in summary.items() if m in args.fit_members)
        print(f"{'in-process fit_components':<26}{local_s:>9.1f}{'1.00x':>15}{member_s:>16.1f}", flush=True)
        if not args.no_ray:
            import ray

            from cryptopredict.config import Config
            from cryptopredict.parallel import connect_ray
            from cryptopredict.training.distributed import fit_with_ray_train

            t0 = time.perf_counter()
            ours = connect_ray(Config())
            init_s = time.perf_counter() - t0
            try:
                for workers in (int(w) for w in args.ray_workers.split(",")):
                    settings = fit_settings(args, "ray", workers)
                    settings.storage_path = str(Path(tmp) / "ray")
                    t0 = time.perf_counter()
                    summary = fit_with_ray_train(payload, settings, Path(tmp) / f"ray{workers}")
                    wall = time.perf_counter() - t0
                    member_s = sum(s["seconds"] for m, s in summary.items() if m in args.fit_members)
                    print(f"{f'Ray Train, {workers} worker(s)':<26}{wall:>9.1f}{wall / local_s:>14.2f}x"
                          f"{member_s:>16.1f}", flush=True)
            finally:
                t0 = time.perf_counter()
                if ours:
                    ray.shutdown()
                print(f"(Ray start {init_s:.1f} s, shutdown {time.perf_counter() - t0:.1f} s, not in the "
                      "figures above; member train s is rank 0's train_net time)")
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
