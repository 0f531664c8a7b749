"""The command line: subcommands, one-line user errors with exit status 2, the config."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cryptopredict.cli import build_parser, main
from cryptopredict.config import ConfigError, load_config
from tests.conftest import REPO_ROOT, SHIPPED_DATA


def _cli(*args: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cryptopredict.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_help_lists_the_real_subcommands() -> None:
    out = _cli("--help")
    assert out.returncode == 0
    choices = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert set(choices) == {"run", "ingest", "features", "evaluate", "lake", "tune", "models", "retrain", "monitor", "serve", "paper"}
    for name in choices:
        assert name in out.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ingest", "--config", "nope.yaml"], "config file 'nope.yaml' does not exist"),
        (["ingest", "--set", "ray.parallelism=fast"], "config field 'ray.parallelism'"),
        (["ingest", "--set", "lake.colour=red"], "config field 'lake.colour'"),
        (["ingest", "--set", "novalue"], "not of the form section.key=value"),
        (["ingest", "--symbols", "BTCUSDT,FOOUSDT"], "symbols ['FOOUSDT'] are not in the snapshot"),
        (["ingest", "--from", "/no/such/dir"], "--from '/no/such/dir': not a directory"),
        (["evaluate", "--data", "/no/such/dir"], "--data '/no/such/dir': not a directory"),
    ],
)
def test_user_errors_print_one_line_and_exit_2(args: list[str], message: str, tmp_path: Path) -> None:
    out = _cli(*args, "--lake-root", str(tmp_path / "lake"))
    assert out.returncode == 2, out.stderr
    assert message in out.stderr
    assert "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_bad_flag_is_an_argparse_error_with_status_2() -> None:
    out = _cli("ingest", "--parallelism", "gpu")
    assert out.returncode == 2 and "invalid choice: 'gpu'" in out.stderr


def test_ingest_then_lake_listing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lake = tmp_path / "lake"
    report = tmp_path / "report.json"
    rc = main(["ingest", "--from", str(SHIPPED_DATA), "--lake-root", str(lake), "--symbols", "DOTUSDT",
               "--parallelism", "serial", "--report", str(report)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "DOTUSDT" in out and "42,629" in out and "10 (20)" in out  # rows, gaps (missing bars)
    assert '"inserted": 42629' in report.read_text()
    assert main(["lake", "--lake-root", str(lake)]) == 0
    listing = capsys.readouterr().out
    assert "exchange=binance/symbol=DOTUSDT/timeframe=1h" in listing and "42,629" in listing


def test_shipped_default_config_is_valid_and_overrides_apply() -> None:
    cfg = load_config(REPO_ROOT / "configs/default.yaml", ["ingest.symbols=[BTCUSDT]", "ray.num_cpus=1"])
    assert cfg.ingest.symbols == ["BTCUSDT"] and cfg.ray.num_cpus == 1 and cfg.lake.root == "lake"
    with pytest.raises(ConfigError, match="ingest.symbols"):
        load_config(None, ["ingest.symbols=[]"])
