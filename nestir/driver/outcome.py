"""What a finished (or running) synthesis says about itself in the report: how finely its
validation images resolved the paired decisions, and what was asked against what was kept."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nestir.driver.phases import fits, size_target

if TYPE_CHECKING:
    from nestir.driver.synthesis import Synthesizer


def resolution(s: Synthesizer) -> dict[str, Any] | None:
    """What the validation images could resolve in the selection's paired decisions (None
    without a paired reference or before any chain step was judged): the median standard
    error and the largest measured difference from the reference that still passed the bound."""
    ses = sorted(e["se"] for e in s.state.scan if e.get("se") is not None)
    if s.reference is None or not ses:
        return None
    se = ses[len(ses) // 2]
    c = s.cfg
    return {"judged": len(ses), "val_images": int(s.reference.numel()), "median_se": se,
            "z": c.confidence, "tolerance": c.tolerance, "passes_at_most": c.tolerance - c.confidence * se,
            "how": "each chain step the selection judged was compared with the dense reference on the same "
                   "validation images; it passed when its error difference plus z standard errors was within "
                   "the tolerance, i.e. when the measured difference was at most passes_at_most. The standard "
                   "error falls as 1/sqrt(validation images)"}


def target_report(s: Synthesizer) -> dict[str, Any]:
    """What was asked, what the kept network reached on the validation split (its selection
    estimate), and why the two differ when they do: the report's ``target``."""
    st, c = s.state, s.cfg
    kept_row = s.selection
    kept = 1 - float(kept_row.get("val_error", 1.0))
    out: dict[str, Any] = {"rule": st.rule, "asked": st.asked, "used": st.target if st.asked is not None else None,
                           "kept": kept, "met": bool(kept_row.get("accepted", False)), "why": ""}
    dense = s.score(s.teacher, s.data.val) if s.teacher is not None else None
    out["dense_reference"] = dense
    if size_target(c):  # the size decides; the accuracy is what it costs
        out["asked"] = {"params": c.target_params or None, "flops": c.target_flops or None}
        out["size"] = {"params": kept_row.get("params"), "flops": kept_row.get("flops")}
        out["met"] = fits(c, kept_row) if kept_row else False
        out["accuracy_vs_dense"] = None if dense is None else kept - dense
        out["why"] = "" if out["met"] else "the pruning chain ended before a network met the size target"
        return out
    if st.asked is None:  # the paired rule: no value, a comparison with the dense reference
        out["asked"] = "no less accurate than the dense reference (paired comparison on the validation images)"
        if not st.target_reached:  # growth fell short, or nothing smaller than the dense reference passed
            out["why"] = ("no network smaller than the dense reference passed the rule: the dense reference is kept"
                          if not out["met"] or st.lo == 0 else
                          "growth fell short of the dense reference, so the pruning chain pruned the dense "
                          "reference; the network kept passed the rule")
        return out
    out["met"] = kept >= st.asked
    if st.target < st.asked:
        out["why"] = (f"lowered to {st.target:.6g} because growth fell short and --no-fallback-dense kept the "
                      "grown network")
    elif not out["met"] and dense is not None and dense < st.asked:
        out["why"] = f"the dense reference itself reaches only {dense:.6g} on the validation split"
    elif not out["met"]:
        out["why"] = "no network passed the rule"
    return out
