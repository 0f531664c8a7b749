"""`cryptopredict models list | promote | rollback`: output, exit codes, one-line user errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from cryptopredict.cli import main
from cryptopredict.registry.registry import ModelRegistry
from tests.registry.conftest import make_model_dir, register_kwargs


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


def _one_line_error(err: str, command: str = "models") -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"cryptopredict {command}: error: ")
    return lines[0]


def test_models_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = ["--set", f"registry.root={tmp_path / 'registry'}", "--model", "lightgbm"]
    rc, _, err = _run(capsys, "models", "list", *root)
    assert rc == 2 and "has no versions of model 'lightgbm'" in _one_line_error(err)
    rc, _, err = _run(capsys, "models", "rollback", *root)
    assert rc == 2 and "has no champion to roll back from" in _one_line_error(err)

    reg = ModelRegistry(str(tmp_path / "registry"))
    for i in (1, 2):
        reg.register(make_model_dir(tmp_path / f"m{i}", seed=i), model="lightgbm", **register_kwargs(i))

    rc, out, _ = _run(capsys, "models", "list", *root)
    assert rc == 0
    rows = {line.split("│")[2].strip(): line for line in out.splitlines() if line.startswith("│")}
    assert set(rows) == {"v0001", "v0002"}
    assert "★" in rows["v0001"] and "★" not in rows["v0002"]
    assert "0.410 [0.390, 0.430]" in rows["v0001"] and "0.50 [-0.50, 1.50]" in rows["v0001"]
    assert "0.420 [0.400, 0.440]" in rows["v0002"] and "1.00 [0.00, 2.00]" in rows["v0002"]
    assert "2021-01-01 00:00 → 2021-02-01 00:00" in rows["v0002"]  # the data span
    assert "champion: v0001" in out

    rc, out, _ = _run(capsys, "models", "promote", "v0002", *root)
    assert rc == 0 and "champion is now v0002" in out
    assert reg.champion("lightgbm").version == "v0002"  # type: ignore[union-attr]
    rc, out, _ = _run(capsys, "models", "list", *root)
    assert "★" in next(line for line in out.splitlines() if "│ v0002" in line) and "champion: v0002" in out

    rc, _, err = _run(capsys, "models", "promote", "v0009", *root)
    assert rc == 2 and "has no version 'v0009'" in _one_line_error(err) and "v0001, v0002" in err

    rc, out, _ = _run(capsys, "models", "rollback", *root)
    assert rc == 0 and "champion is now v0001" in out
    rc, _, err = _run(capsys, "models", "rollback", *root)
    assert rc == 2 and "no previous champion to roll back to" in _one_line_error(err)
    assert reg.champion("lightgbm").version == "v0001"  # type: ignore[union-attr]

    (tmp_path / "registry/lightgbm/v0002/files/weights.json").write_text("tampered")
    rc, _, err = _run(capsys, "models", "promote", "2", *root)
    assert rc == 2 and "weights.json" in _one_line_error(err)
    assert reg.champion("lightgbm").version == "v0001"  # type: ignore[union-attr]


def test_models_needs_an_action(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["models"])
    assert exc.value.code == 2
    assert "ACTION" in capsys.readouterr().err
