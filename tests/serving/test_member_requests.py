"""The Serve app's request path without Ray: member requests that carry symbol positions (the snapshot's
panel only when a member asks for it), the same member outputs as the in-process runners, and the fusion
of a batch of requests giving each request what it gets alone."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from cryptopredict.serving.predictor import (
    MemberRequest,
    PanelCache,
    Predictor,
    SnapshotMissing,
    VersionMismatchError,
    directory_source,
    fixed_clock,
    member_batch,
    run_member_requests,
    snapshot_positions,
)
from tests.support.served_model import SYMBOLS, ServedModel


@pytest.fixture(scope="module")
def predictor(served_model: ServedModel) -> Predictor:
    return Predictor(served_model.cfg, served_model.model_dir, served_model.version,
                     clock=fixed_clock(served_model.now))


def test_member_requests_carry_the_panel_once_and_equal_single_runs(predictor: Predictor) -> None:
    snap = predictor.snapshot()
    asks = [["ETHUSDT"], ["SOLUSDT", "BTCUSDT"], ["ETHUSDT"]]  # one symbol asked twice: two rows
    for member, runner in predictor.members.items():
        panels = PanelCache()
        requests = [MemberRequest(snap.version, snap.id, snapshot_positions(snap, a)) for a in asks]
        first = run_member_requests(lambda v, s, r=runner: r, panels, requests)
        assert first == [SnapshotMissing(snap.id)] * 3  # this replica has never seen the snapshot
        requests[0].panel = snap.panel  # the ingress sends it again, with the panel
        outs = run_member_requests(lambda v, s, r=runner: r, panels, requests)
        assert snap.id in panels and panels.received == 1
        for a, out in zip(asks, outs, strict=True):
            single = runner.run(member_batch(snap, member, a))  # the in-process path
            assert out.symbols == a and out.snapshot_id == snap.id and out.version == snap.version
            np.testing.assert_allclose(out.proba, single.proba, atol=1e-6)
            np.testing.assert_allclose(out.log_vol, single.log_vol, atol=1e-6)
            np.testing.assert_allclose(out.confidence, single.confidence, atol=1e-6)
        again = run_member_requests(lambda v, s, r=runner: r, panels,  # kept: no panel needed any more
                                    [MemberRequest(snap.version, snap.id, snapshot_positions(snap, ["BTCUSDT"]))])
        np.testing.assert_allclose(again[0].proba, outs[1].proba[1:], atol=1e-6)


def test_a_member_request_of_another_version_is_refused(predictor: Predictor) -> None:
    snap = predictor.snapshot()
    runner = predictor.members["gnn"]
    request = MemberRequest("v9", snap.id, snapshot_positions(snap, ["BTCUSDT"]), panel=snap.panel)
    with pytest.raises(VersionMismatchError, match="holds model v1, the batch is for v9"):
        run_member_requests(lambda v, s: runner, PanelCache(), [request])


def test_the_panel_cache_keeps_the_most_recent_snapshots(predictor: Predictor) -> None:
    panels, panel = PanelCache(keep=2), predictor.snapshot().panel
    for sid in ("a", "b", "c"):
        panels.put(sid, panel)
    assert "a" not in panels and "b" in panels and "c" in panels
    assert panels.get("b") is panel and panels.get("a") is None


@pytest.mark.parametrize("missing_sigma", [False, True])
def test_a_batch_of_requests_is_fused_as_each_request_alone(predictor: Predictor, served_model: ServedModel,
                                                            missing_sigma: bool) -> None:
    """The ingress fuses the rows of a batch in one call when every σ is known (else request by request):
    each request gets the answer the in-process Predictor gives it alone."""
    from cryptopredict.serving.app import _fuse_jobs, _Job, _State

    snap = predictor.snapshot()
    if missing_sigma:  # the fusion stands in the median of the rows' σ: the batch must not change it
        snap = dataclasses.replace(snap, sigma={**snap.sigma, "SOLUSDT": math.nan})
    state = _State(predictor.meta, directory_source(served_model.model_dir, "v1"), predictor.cache,
                   predictor.fusion, 0)
    asks = [["ETHUSDT"], ["SOLUSDT", "BTCUSDT"], ["BTCUSDT"], list(SYMBOLS)]
    jobs = [_Job(state, snap, a, None) for a in asks]  # type: ignore[arg-type]
    positions = np.concatenate([snapshot_positions(snap, a) for a in asks])
    outputs = {m: r.run_positions(snap.panel, positions, snap.id) for m, r in predictor.members.items()}
    answers = _fuse_jobs(state, snap, jobs, outputs)
    for a, got in zip(asks, answers, strict=True):
        alone = predictor.fusion.fuse({m: r.run(member_batch(snap, m, a)) for m, r in predictor.members.items()},
                                      [snap.sigma.get(s, math.nan) for s in a], snap.as_of)
        assert list(got) == a
        for p in alone:
            q = got[p.symbol].prediction
            assert q.model_version == "v1" and q.as_of == snap.as_of.isoformat()
            np.testing.assert_allclose([q.probabilities.SELL, q.probabilities.HOLD, q.probabilities.BUY],
                                       [p.probabilities.SELL, p.probabilities.HOLD, p.probabilities.BUY], atol=1e-6)
            assert q.confidence == pytest.approx(p.confidence, abs=1e-6)
            assert q.predicted_volatility == pytest.approx(p.predicted_volatility, rel=1e-5)
            assert q.position_size == pytest.approx(p.position_size, abs=1e-6)
            assert got[p.symbol].body == q.model_dump_json().encode()
