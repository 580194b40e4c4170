"""The selection phase: the pruning chain is scanned from its most pruned end; each step judged
is trial-refit and compared with the dense reference (pooled with the more pruned steps judged
before it); the first that passes, confirmed by its less pruned neighbour, is kept. With a size
target the least pruned network within it is kept instead."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nestir.driver.decide import pooled
from nestir.driver.phases import fits, size_target
from nestir.ir.stats import stats

if TYPE_CHECKING:
    from nestir.driver.synthesis import Synthesizer


def select(s: Synthesizer) -> None:
    st, c = s.state, s.cfg
    if size_target(c):
        select_for_size(s)
    while st.phase == "select":
        if st.lo or st.cursor < 1:
            res = s.resolution
            if res is not None:
                s.rep.message(
                    f"the selection judged {res['judged']} chain steps on {res['val_images']:,} validation images: "
                    f"a decision's standard error was {100 * res['median_se']:.2f} pts (median), so a step passed "
                    f"only when measured at most {100 * res['passes_at_most']:+.2f} pts from the dense reference; "
                    "more validation images (--val-fraction) narrow this")
            no_bigger_than_dense(s)
            st.phase = "refit"
            s.checkpoint()
            return
        _judge_step(s, st.cursor)


def _judge_step(s: Synthesizer, k: int) -> None:
    """Trial-refit chain step ``k`` and judge it; move the scan's cursor on."""
    st, c = s.state, s.cfg
    small = s.smaller_than_dense(st.history[st.chain[k]["row"]])
    if not small and not st.pending:  # this step and every less pruned one: nothing to keep
        st.cursor = 0
        s.rep.message(f"chain step {k} and every less pruned one are not smaller than the dense "
                      "reference (no fewer parameters, or more FLOPs): the scan ends")
        return
    s.trainer = s.new_trainer(s.load_snapshot(k), c.lr)
    s.train(c.trial_epochs, f"trial refit of chain step {k}", anneal=True)
    row = s.record("select", f"chain step {k} after a {c.trial_epochs}-epoch trial refit", report=False)
    pool(s, k, row)
    if st.pending:
        confirm(s, row)
        if st.lo:  # the pending step is kept; this one only confirmed it
            row["accepted"] = False
    if not small:  # judged only to confirm the pending step; never kept itself
        row["accepted"] = False
        row["note"] += "; never kept: not smaller than the dense reference (parameters or FLOPs)"
    if not st.lo and row["accepted"]:
        if k == 1 or s.reference is None:  # nothing less pruned left to confirm it (or no pairing)
            st.lo = k
            s.keep_best(row)
        else:
            st.pending, s.candidate = k, s.graph.copy()
            row["accepted"] = False
            row["note"] += "; passes, to be confirmed by the next step judged"
    s.rep.step(row)
    trials = len(st.scan)  # past the budget the scan strides down faster (1, 2, 4, ...)
    stride = 1 if trials < c.max_trials else 2 ** (trials - c.max_trials + 1)
    # step 1 is always judged before the scan ends (unless it is no smaller than the dense reference)
    st.cursor = max(1, k - stride) if k > 1 and small else 0
    s.checkpoint()


def pool(s: Synthesizer, k: int, row: dict[str, Any]) -> None:
    """Judge chain step ``k`` with the networks judged before it (all more pruned): under a
    monotone error curve their mean error bounds step ``k``'s from above, so ``k`` passes when
    the pooled paired bound of some block of steps ``k..m`` is within the tolerance
    (:func:`nestir.driver.decide.pooled`). Without a paired reference each step is judged alone."""
    if s.reference is None:
        return
    v0 = s.last_verdict
    assert v0 is not None and v0.wrong is not None
    s.state.scan.append({"index": k, "row": row["step"], "wrong": v0.wrong.cpu(), "se": v0.se})
    judged = [e["wrong"] for e in reversed(s.state.scan)]  # k first, then k+1, ...
    best, size = None, 0
    for j in range(1, len(judged) + 1):
        v = pooled(judged[:j], s.reference, z=s.cfg.confidence, tolerance=s.cfg.tolerance)
        if best is None or v.bound < best.bound:
            best, size = v, j
    assert best is not None
    if size > 1:
        row["accepted"] = best.accept
        row["note"] += (f"; pooled with the {size - 1} more pruned step(s) judged before: error "
                        f"{100 * best.delta:+.2f} pts, bound {100 * best.bound:+.2f}")


def confirm(s: Synthesizer, row: dict[str, Any]) -> None:
    """The pending step passed on its own (or pooled with more pruned steps); keep it only when
    its pair with the less pruned step just judged passes too. A more pruned network is no more
    accurate, so the pair's mean error is at most the pending step's: a pending step that
    passed by luck on the validation images rarely has a neighbour that is lucky as well."""
    st = s.state
    p = next(e for e in st.scan if e["index"] == st.pending)
    v = pooled([st.scan[-1]["wrong"], p["wrong"]], s.reference, z=s.cfg.confidence, tolerance=s.cfg.tolerance)
    prow = st.history[p["row"]]
    if v.accept:
        st.lo = st.pending
        prow["accepted"] = True
        prow["note"] = prow["note"].replace("to be confirmed by the next step judged",
                                            f"confirmed with chain step {st.scan[-1]['index']}")
        s.best, st.best_val, st.best_row = s.candidate, 1 - prow["val_error"], prow["step"]
    else:
        prow["note"] = prow["note"].replace("to be confirmed by the next step judged",
                                            f"not confirmed with chain step {st.scan[-1]['index']}")
    row["note"] += (f"; with chain step {st.pending}: error {100 * v.delta:+.2f} pts, bound "
                    f"{100 * v.bound:+.2f} ({'confirms' if v.accept else 'does not confirm'} it)")
    st.pending, s.candidate = 0, None


def no_bigger_than_dense(s: Synthesizer) -> None:
    """Nothing smaller passed, and the network kept is not smaller than the dense reference
    (no fewer parameters, or more FLOPs): ship the dense reference instead (same accuracy by
    definition, no more parameters, no more FLOPs)."""
    if s.teacher is None or s.best is None or s.state.lo != 0:
        return
    if not s.smaller_than_dense(stats(s.best)):
        s.trainer = s.new_trainer(s.teacher.copy(), s.cfg.lr)
        row = s.record("select", "the dense reference: no smaller network passed the rule")
        s.keep_best(row)
        s.state.target_reached = False
        s.rep.message("no network smaller than the dense reference passed the rule: the dense reference is kept")


def select_for_size(s: Synthesizer) -> None:
    """A size target: keep the least pruned chain network within it (after its trial refit),
    the most accurate one a monotone error curve allows; the row notes how it compares with
    the dense reference under the run's rule, which does not decide here."""
    st, c = s.state, s.cfg
    inside = [i for i, e in enumerate(st.chain) if fits(c, st.history[e["row"]])]
    k = inside[0] if inside else len(st.chain) - 1
    if not inside:
        s.rep.message("the pruning chain ended before any network met the size target: its smallest network "
                      "is kept")
    s.trainer = s.new_trainer(s.load_snapshot(k), c.lr)
    s.train(c.trial_epochs, f"trial refit of chain step {k}", anneal=True)
    row = s.record("select", f"chain step {k}: the least pruned network within the size target, after a "
                             f"{c.trial_epochs}-epoch trial refit")
    row["point_ok"], row["accepted"] = row.get("point_ok", row["accepted"]), bool(inside)
    s.keep_best(row)
    st.lo, st.target_reached = k, bool(inside)
    st.phase = "refit"
    s.checkpoint()
