"""The scaler learns from training rows only and is reused unchanged forward."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cryptopredict.features.scaling import RobustScaler


def test_fit_on_train_only_and_apply_forward(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    train = pd.DataFrame({"a": rng.normal(5, 2, 1000), "b": np.ones(1000)})
    test = pd.DataFrame({"a": rng.normal(50, 2, 10), "b": np.full(10, 3.0)})  # a regime shift after training
    scaler = RobustScaler(clip=100).fit(train)
    med, iqr = np.median(train["a"]), np.subtract(*np.percentile(train["a"], [75, 25]))
    out = scaler.transform(test)
    assert out["a"].to_numpy() == pytest.approx((test["a"].to_numpy() - med) / iqr)
    assert (out["b"] == 2.0).all()  # zero IQR in training: centred, scaled by 1
    refit = RobustScaler(clip=100).fit(pd.concat([train, test]))
    assert refit.center["a"] != scaler.center["a"]  # the test rows would have moved it: they were not used
    scaler.save(tmp_path / "scaler.json")
    assert RobustScaler.load(tmp_path / "scaler.json").transform(test).equals(out)


def test_clipping_nans_and_misuse() -> None:
    scaler = RobustScaler(clip=3).fit(pd.DataFrame({"a": [0.0, 1.0, 2.0, 3.0, 4.0]}))
    out = scaler.transform(pd.DataFrame({"a": [1e9, np.nan, -1e9]}))
    assert out["a"].iloc[0] == 3 and np.isnan(out["a"].iloc[1]) and out["a"].iloc[2] == -3
    with pytest.raises(RuntimeError, match="before fit"):
        RobustScaler().transform(pd.DataFrame({"a": [1.0]}))
    with pytest.raises(ValueError, match="missing"):
        scaler.transform(pd.DataFrame({"b": [1.0]}))
    with pytest.raises(ValueError, match="empty"):
        RobustScaler().fit(pd.DataFrame({"a": []}))
