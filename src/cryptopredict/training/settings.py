"""The ``tuning`` section of the config (Ray Tune over the deep members and the fusion) and the default
search spaces, as plain data: pydantic and the standard library only, so that loading the config stays cheap.

A search space is a mapping from a setting to a SPEC. Per member net (``transformer``, ``bilstm``,
``cnn_lstm``, ``gnn``) the settings are ``window`` (bars per input window), ``train.<field>`` (a field of
``training.trainer.TrainConfig``: lr, weight_decay, focal_gamma, dropout_start, …) and ``net.<arg>`` (a
constructor argument of the member's net: d_model, hidden, n_layers, …); for ``fusion`` they are the
arguments of ``models.fusion.BayesianFusion`` (steps, lr, prior_scale, …). A spec is one of

    [a, b, c]                 a choice (tune.choice)          {"choice": [a, b, c]}   the same
    {"grid": [a, b]}          every value (tune.grid_search; multiplies num_samples)
    {"uniform": [lo, hi]}     {"loguniform": [lo, hi]}        {"quniform": [lo, hi, q]}
    {"randint": [lo, hi]}     an integer in [lo, hi)          {"qloguniform": [lo, hi, q]}
    {"value": x} or a scalar  fixed (not searched)

``tuning.search_spaces`` is merged onto the defaults below, setting by setting; ``null`` removes a setting
from the search (the base value is used). From the command line:
``--set tuning.search_spaces.transformer.train.lr={loguniform:[1e-4,1e-2]}``.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MEMBER_NAMES = ("transformer", "bilstm", "cnn_lstm", "gnn")  # = models.ensemble.MEMBER_NETS (a test checks)
TUNABLE = (*MEMBER_NAMES, "fusion")
MEMBER_SECTIONS = ("train", "net")  # nested sections of a member's space; ``window`` sits at the top
DISTRIBUTIONS = {"choice": None, "grid": None, "uniform": 2, "loguniform": 2, "randint": 2, "quniform": 3,
                 "qloguniform": 3, "value": None}

_SHARED_TRAIN: dict[str, Any] = {
    "lr": {"loguniform": [3e-4, 1e-2]},
    "weight_decay": {"loguniform": [1e-4, 1e-1]},
    "dropout_start": {"uniform": [0.05, 0.35]},
    "focal_gamma": [0.0, 1.0, 2.0],
}

DEFAULT_SEARCH_SPACES: dict[str, dict[str, Any]] = {
    "transformer": {"window": [16, 32, 48], "train": dict(_SHARED_TRAIN),
                    "net": {"d_model": [16, 32, 64], "n_layers": [1, 2], "ff_mult": [2, 4]}},
    "bilstm": {"window": [16, 32, 48], "train": dict(_SHARED_TRAIN),
               "net": {"hidden": [16, 32, 64], "n_layers": [1, 2]}},
    "cnn_lstm": {"window": [16, 32, 48], "train": dict(_SHARED_TRAIN),
                 "net": {"channels": [16, 32], "hidden": [16, 32, 64]}},
    "gnn": {"window": [16, 32, 48], "train": dict(_SHARED_TRAIN),
            "net": {"hidden": [16, 32], "n_layers": [1, 2], "conv": ["gat", "gcn"],
                    "edge_threshold": {"uniform": [0.3, 0.7]}}},
    "fusion": {"steps": [200, 500, 1000], "lr": {"loguniform": [5e-3, 1e-1]},
               "prior_scale": {"loguniform": [0.1, 3.0]}},
}


def is_spec(value: Any) -> bool:
    """A leaf of a search space: a list, a scalar, or a one-key mapping naming a distribution."""
    return not isinstance(value, dict) or (len(value) == 1 and next(iter(value)) in DISTRIBUTIONS)


def check_spec(path: str, spec: Any) -> None:
    """Raise a ValueError naming ``path`` when ``spec`` is not a valid spec (see the module docstring)."""
    if isinstance(spec, list):
        if not spec:
            raise ValueError(f"{path}: an empty choice")
        return
    if not isinstance(spec, dict):
        return  # a fixed scalar
    if len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
        raise ValueError(f"{path}: {spec!r} is not a spec; use a list (choice) or one of "
                         f"{sorted(DISTRIBUTIONS)} as the only key")
    kind, args = next(iter(spec.items()))
    if kind == "value":
        return
    if not isinstance(args, list) or not args:
        raise ValueError(f"{path}: {kind} takes a non-empty list, got {args!r}")
    arity = DISTRIBUTIONS[kind]
    if arity is None:
        return
    if len(args) != arity or not all(isinstance(a, int | float) and not isinstance(a, bool) for a in args):
        raise ValueError(f"{path}: {kind} takes {arity} numbers, got {args!r}")
    lo, hi = args[0], args[1]
    if not lo < hi:
        raise ValueError(f"{path}: {kind} needs low < high, got {args!r}")
    if kind in ("loguniform", "qloguniform") and lo <= 0:
        raise ValueError(f"{path}: {kind} needs low > 0, got {args!r}")


def _number(x: Any) -> Any:
    """YAML 1.1 reads ``1e-4`` (no dot) as a string: numeric strings in a distribution become floats."""
    if isinstance(x, str):
        try:
            return float(x)
        except ValueError:
            return x
    return x


def normalise_space(space: dict[str, Any]) -> dict[str, Any]:
    """``space`` with the numbers of every range distribution (uniform, loguniform, …) as numbers."""
    out: dict[str, Any] = {}
    for key, value in space.items():
        if isinstance(value, dict) and not is_spec(value):
            out[key] = normalise_space(value)
        elif isinstance(value, dict) and DISTRIBUTIONS[next(iter(value))] is not None:
            kind, args = next(iter(value.items()))
            out[key] = {kind: [_number(a) for a in args] if isinstance(args, list) else args}
        else:
            out[key] = value
    return out


def merge_space(default: dict[str, Any], override: dict[str, Any] | None) -> dict[str, Any]:
    """``override`` merged onto ``default`` setting by setting (a spec replaces a spec whole; sections merge;
    ``None`` removes the setting)."""
    out = copy.deepcopy(default)
    for key, value in (override or {}).items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and not is_spec(value) and isinstance(out.get(key), dict) \
                and not is_spec(out[key]):
            out[key] = merge_space(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def flatten_space(space: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": spec}}`` → ``{"train.lr": spec}`` (leaves are specs)."""
    out: dict[str, Any] = {}
    for key, value in space.items():
        path = f"{prefix}{key}"
        if is_spec(value):
            out[path] = value
        else:
            out.update(flatten_space(value, path + "."))
    return out


class TuningConfig(BaseModel):
    """``tuning``: which models to tune, how many trials, ASHA, inner folds and resources per trial.

    Tuning reads ONLY data before ``evaluation.test_start`` (less the purge): the walk-forward test folds,
    the last one included, are never seen by any trial (see ``training/tuning.py``).
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    models: list[str] = Field(default_factory=lambda: list(TUNABLE),
                              description=f"what to tune, in order: any of {list(TUNABLE)}; the fusion is tuned "
                              "on the outputs of the ensemble's members (with this run's best settings)")
    num_samples: int = Field(8, ge=1, description="trials per model (each grid value counts num_samples times)")
    max_epochs: int = Field(6, ge=1, description="epochs per member trial (ASHA's max_t per inner fold)")
    grace_period: int = Field(1, ge=1, description="ASHA: epochs every trial gets before it can be stopped")
    reduction_factor: float = Field(3.0, gt=1, description="ASHA: keep the best 1/reduction_factor at a rung")
    n_folds: int = Field(1, ge=1, description="inner folds: the last n_folds validation windows before "
                         "evaluation.test_start; a trial's score is the mean of its best validation loss")
    valid_bars: int | None = Field(None, ge=1, description="bars per inner validation window "
                                   "(default: evaluation.split.valid_bars, else its test_bars)")
    fusion_holdout: float = Field(0.3, gt=0, lt=1, description="fusion trials: the later share of the "
                                  "validation bars scored (held-out NLL); the fusion is fitted on the rest")
    base_params: dict[str, Any] = Field(default_factory=dict, description="ensemble settings every trial "
                                        "starts from, merged over evaluation.model_params.ensemble")
    search_spaces: dict[str, dict[str, Any]] = Field(default_factory=dict, description="merged onto the "
                                                     "default space of each model (null removes a setting)")
    cpus_per_trial: float = Field(1.0, gt=0, description="Ray CPUs per trial")
    gpus_per_trial: float = Field(0.0, ge=0, description="Ray GPUs per trial (a fraction shares a GPU); "
                                  "0 runs trials on the CPU")
    max_concurrent_trials: int | None = Field(None, ge=1, description="default: as many as resources allow")
    time_budget_s: float | None = Field(None, gt=0, description="per model: stop starting trials after this")
    seed: int | None = Field(None, description="search seed (default: the config's seed)")
    verbose: int = Field(1, ge=0, le=3, description="Ray Tune's progress output (0 silent … 3 detailed)")

    @field_validator("models")
    @classmethod
    def _known_models(cls, v: list[str]) -> list[str]:
        unknown = [m for m in v if m not in TUNABLE]
        if unknown or not v:
            raise ValueError(f"unknown models to tune {unknown}; known: {list(TUNABLE)}")
        return list(dict.fromkeys(v))

    @field_validator("search_spaces")
    @classmethod
    def _numbers(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        return {m: normalise_space(space) if isinstance(space, dict) else space for m, space in v.items()}

    @model_validator(mode="after")
    def _spaces(self) -> TuningConfig:
        unknown = [m for m in self.search_spaces if m not in TUNABLE]
        if unknown:
            raise ValueError(f"search_spaces for unknown models {unknown}; known: {list(TUNABLE)}")
        for model in self.search_spaces:
            space = self.space_for(model)
            if model != "fusion":
                bad = [k for k, v in space.items() if k != "window" and (k not in MEMBER_SECTIONS or is_spec(v))]
                if bad:
                    raise ValueError(f"search_spaces.{model}: {bad} are not settings; use window, "
                                     "train.<TrainConfig field> or net.<net argument>")
            leaves = {k: v for k, v in space.items()} if model == "fusion" else {
                f"{section}.{k}": v for section in MEMBER_SECTIONS for k, v in space.get(section, {}).items()}
            for path, spec in leaves.items():  # a mapping that is not a spec is one level too deep
                if not is_spec(spec):
                    raise ValueError(f"search_spaces.{model}.{path}: {spec!r} is not a spec; use a list (choice) "
                                     f"or one of {sorted(DISTRIBUTIONS)} as the only key")
            for path, spec in flatten_space(space).items():
                check_spec(f"search_spaces.{model}.{path}", spec)
        return self

    def space_for(self, model: str) -> dict[str, Any]:
        """The effective search space of ``model``: the default merged with ``search_spaces``."""
        return merge_space(DEFAULT_SEARCH_SPACES[model], self.search_spaces.get(model))
