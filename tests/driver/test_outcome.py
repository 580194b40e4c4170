"""The report's ``target`` block says why the network kept is what it is."""

from types import SimpleNamespace

from nestir.driver.config import RunState, SynthConfig
from nestir.driver.outcome import target_report


def synth(lo: int, accepted: bool) -> SimpleNamespace:
    st = RunState(target_reached=False, lo=lo)
    return SimpleNamespace(state=st, cfg=SynthConfig(), selection={"val_error": 0.02, "accepted": accepted},
                           teacher=None, data=SimpleNamespace(val=None), score=lambda g, d: 0.0)


def test_a_chain_network_kept_after_growth_fell_short_is_not_called_the_dense_reference():
    t = target_report(synth(lo=7, accepted=True))  # type: ignore[arg-type]
    assert t["met"] and "growth fell short" in t["why"] and "dense reference is kept" not in t["why"]


def test_the_dense_reference_kept_says_so():
    t = target_report(synth(lo=0, accepted=True))  # type: ignore[arg-type]
    assert "the dense reference is kept" in t["why"]
    t = target_report(synth(lo=3, accepted=False))  # type: ignore[arg-type]
    assert "the dense reference is kept" in t["why"]
