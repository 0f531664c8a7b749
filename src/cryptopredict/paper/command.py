"""``cryptopredict paper``: paper trading on live closed candles with the Serve app's predictions.

Never sends an order: the ccxt exchange is opened without keys and with every order method disabled
(``feed.disable_orders``); fills are simulated with the backtester's cost model. Wire it into the CLI with
``add_arguments(subparser)`` and ``run(cfg, args)``; ``python -m cryptopredict.paper.command`` runs it on its
own (with ``--config``/``--set``/``--verbose``). User errors (unknown symbol, a state dir holding other
settings or in use, the Serve app refusing the request) raise ValueError: the CLI prints one line, exit 2.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from cryptopredict.config import Config, ConfigError, load_config
from cryptopredict.evaluation.backtest import BacktestConfig
from cryptopredict.evaluation.risk import RiskConfig

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``paper`` flags (``--symbols`` only when the parser lacks it: the CLI's common options have it)."""
    try:
        parser.add_argument("--symbols", default=None, help="comma-separated symbols, e.g. BTCUSDT,ETH/USDT")
    except argparse.ArgumentError:
        pass
    parser.add_argument("--serve-url", default=None, help="the Serve app (default: paper.serve_url)")
    parser.add_argument("--state-dir", default=None, help="ledger directory (default: paper.state_dir)")
    parser.add_argument("--max-bars", type=int, default=None, help="stop after this many bars (this run)")
    parser.add_argument("--poll", type=float, default=None, metavar="SECONDS",
                        help="seconds between exchange polls (default: paper.poll_interval_s, else each bar "
                        "close + paper.grace_s)")
    parser.add_argument("--once", action="store_true", help="process the bars closed so far, then exit")


def settings_from(cfg: Config, args: argparse.Namespace) -> tuple[Config, list[str]]:
    """``cfg`` with the flags applied to ``paper``, and the symbols asked for (flag > paper > ingest)."""
    paper = cfg.paper.model_copy(update={k: v for k, v in (("serve_url", args.serve_url),
                                                              ("state_dir", args.state_dir),
                                                              ("poll_interval_s", args.poll)) if v is not None})
    if args.max_bars is not None and args.max_bars < 1:
        raise ValueError(f"--max-bars must be at least 1, got {args.max_bars}")
    if args.poll is not None and args.poll <= 0:
        raise ValueError(f"--poll must be > 0 seconds, got {args.poll}")
    if args.symbols is not None:
        symbols = [s.strip() for s in args.symbols.split(",") if s.strip()]
        if not symbols:
            raise ValueError("--symbols: give at least one symbol, e.g. BTCUSDT,ETHUSDT")
    else:
        symbols = list(paper.symbols or cfg.ingest.symbols)
    return cfg.model_copy(update={"paper": paper}), symbols


def risk_config(cfg: Config) -> RiskConfig:
    """The evaluation's risk settings at the label horizon (as the evaluation run builds them)."""
    return RiskConfig(**{**cfg.evaluation.risk.model_dump(), "horizon": cfg.features.horizon})


def cost_config(cfg: Config) -> BacktestConfig:
    """The evaluation's cost model, starting from ``paper.initial_cash``."""
    return cfg.evaluation.backtest.model_copy(update={"initial_equity": cfg.paper.initial_cash})


def ledger_settings(cfg: Config, symbols: list[str]) -> dict[str, Any]:
    """What a ledger must keep for its whole life (a resume with other values is refused)."""
    return {"exchange": cfg.ingest.exchange, "timeframe": cfg.ingest.timeframe, "symbols": symbols,
            "risk": risk_config(cfg).model_dump(), "costs": cost_config(cfg).model_dump(),
            "use_log_vol_var": cfg.paper.use_log_vol_var}


def run(cfg: Config, args: argparse.Namespace) -> int:
    """Run the paper trader; 0 when it stopped as asked, 1 when it had to stop (summary printed either way)."""
    from cryptopredict.data.sources.retry import RetryPolicy
    from cryptopredict.paper.client import PredictionClient, ServeSchemaError
    from cryptopredict.paper.engine import FaultPoints, PaperEngine, PaperStopped
    from cryptopredict.paper.feed import BarFeed, local_clock, open_paper_exchange
    from cryptopredict.paper.ledger import Ledger, run_key

    cfg, wanted = settings_from(cfg, args)
    pc = cfg.paper
    policy = RetryPolicy(max_attempts=pc.max_attempts, base_delay_s=pc.backoff_base_s,
                         max_delay_s=pc.backoff_max_s)
    exchange = open_paper_exchange(cfg.ingest.exchange, cfg.ingest.exchange_api_urls)
    feed = BarFeed(exchange, wanted, cfg.ingest.timeframe, clock=local_clock if pc.clock == "local" else None,
                   policy=policy)
    faults = FaultPoints.from_env()
    client = PredictionClient(pc.serve_url, connect_timeout_s=pc.connect_timeout_s,
                              read_timeout_s=pc.read_timeout_s, policy=policy)
    try:
        ledger = Ledger(pc.state_dir, run_key(cfg.ingest.exchange, cfg.ingest.timeframe, feed.symbols),
                        feed.symbols, ledger_settings(cfg, feed.symbols))
    except BaseException:
        client.close()
        raise
    stop = threading.Event()
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):  # finish the bar in hand, then stop
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    try:
        engine = PaperEngine(feed, client, ledger, risk_config(cfg), cost_config(cfg),
                             use_log_vol_var=pc.use_log_vol_var, max_unavailable_bars=pc.max_unavailable_bars,
                             faults=faults)
        print(f"paper trading {', '.join(feed.symbols)} {cfg.ingest.timeframe} on {cfg.ingest.exchange} with "
              f"{pc.serve_url}; ledger {ledger.dir} ({len(engine.history)} bars so far); no orders are sent",
              flush=True)
        try:
            summary = engine.run(stop=stop, max_bars=args.max_bars, once=args.once, poll_s=pc.poll_interval_s,
                                 grace_s=pc.grace_s)
            rc = 0
        except (PaperStopped, ServeSchemaError) as exc:
            print(f"cryptopredict paper: error: {exc}", file=sys.stderr)
            summary, rc = engine.summary(), 1
        print(summary.render(), flush=True)
        return rc
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        client.close()
        ledger.close()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cryptopredict paper", description=__doc__.splitlines()[0])
    parser.add_argument("--config", "-c", default=None, help="YAML config (default: built-in defaults)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set paper.initial_cash=5000")
    parser.add_argument("--verbose", "-v", action="store_true")
    add_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry point with the CLI's error convention (user error: one line, exit 2)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return run(load_config(args.config, args.overrides), args)
    except (ConfigError, ValueError, FileNotFoundError, KeyError) as exc:
        if args.verbose:
            log.exception("error")
        print(f"cryptopredict paper: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
