"""Ray Train: the ensemble's ``fit_components`` as the training loop of a data-parallel ``TorchTrainer``.

Each worker receives the fit's tensors through the object store (one ``ray.put``), trains every member
with its share of the samples (DDP through ``ray.train.torch.prepare_model``; gradients all-reduced, so the
weights stay identical), and rank 0 fits the fusion and reports the model directory as the Ray Train
checkpoint, which the driver copies out. One process or N workers run the same function (tests run it in
one process). GPUs: ``use_gpu`` (or null: when CUDA is visible) gives each worker one GPU.

Multi-GPU on one node: ``--set evaluation.model_params.ensemble.backend=ray
--set evaluation.model_params.ensemble.num_workers=8`` with ``configs/gpu.yaml``.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def _ensure_ray() -> None:
    import ray

    if not ray.is_initialized():
        from cryptopredict.parallel import LOCAL_RAY_ENV

        for var, value in LOCAL_RAY_ENV.items():
            os.environ.setdefault(var, value)
        address = os.environ.get("RAY_ADDRESS") or "local"
        ray.init(address=address, include_dashboard=False, log_to_driver=True)


def _train_loop(config: dict[str, Any]) -> None:
    """The per-worker loop (runs inside Ray Train)."""
    import ray
    import ray.train
    import ray.train.torch
    from ray.train import Checkpoint

    from cryptopredict.models.ensemble import EnsembleSettings, fit_components

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    payload = ray.get(config["payload"])
    settings = EnsembleSettings(**config["settings"])
    device = ray.train.torch.get_device()
    with tempfile.TemporaryDirectory(prefix="cp-train-") as tmp:
        out = Path(tmp) / "model"
        summary = fit_components(payload, settings, out, rank=rank, world=world, device=device,
                                 wrap=ray.train.torch.prepare_model if world > 1 else None)
        metrics = {"world_size": world, **{f"{m}_best_valid_loss": float(s["best_valid_loss"])
                                           for m, s in summary.items() if isinstance(s, dict)
                                           and "best_valid_loss" in s}}
        if rank == 0:
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(str(out)))
        else:
            ray.train.report(metrics)


def fit_with_ray_train(payload: Any, settings: Any, out_dir: Path) -> dict[str, Any]:
    """Run ``fit_components`` on ``settings.num_workers`` Ray Train workers; the model lands in
    ``out_dir``. Returns the training summary (from the checkpoint's training.json) plus timings."""
    import json

    import ray
    import torch
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    _ensure_ray()
    started = time.perf_counter()
    use_gpu = torch.cuda.is_available() if settings.use_gpu is None else settings.use_gpu
    with tempfile.TemporaryDirectory(prefix="cp-raytrain-") as tmp:
        storage = settings.storage_path or tmp
        trainer = TorchTrainer(
            _train_loop,
            train_loop_config={"payload": ray.put(payload), "settings": settings.model_dump()},
            scaling_config=ScalingConfig(num_workers=settings.num_workers, use_gpu=use_gpu,
                                         resources_per_worker={"CPU": settings.cpus_per_worker,
                                                               **({"GPU": 1} if use_gpu else {})}),
            run_config=RunConfig(storage_path=str(Path(storage).absolute()), name=f"ensemble-{uuid.uuid4().hex[:8]}"),
        )
        result = trainer.fit()
        if result.checkpoint is None:
            raise RuntimeError(f"Ray Train finished without a checkpoint: {result.error}")
        result.checkpoint.to_directory(str(out_dir))
    summary = json.loads((out_dir / "training.json").read_text())
    summary["ray_train"] = {"workers": settings.num_workers, "use_gpu": use_gpu,
                            "seconds": time.perf_counter() - started}
    log.info("Ray Train fit on %d worker(s) in %.1f s", settings.num_workers, time.perf_counter() - started)
    return summary
