from nestir.driver.report import phase_spans, plot_history


def rows(*phases):
    return [{"step": i, "phase": p, "params": 100 - i, "flops": 200, "val_error": 0.02} for i, p in enumerate(phases)]


def test_phase_spans_name_the_flow_and_trial_refits_are_not_growth():
    r = rows("seed", "grow", "grow", "shift", "prune", "prune", "select", "select")
    assert phase_spans(r) == [("growth", 0, 2), ("shift", 3, 3), ("pruning chain", 4, 5),
                              ("selection (trial refits)", 6, 7)]
    # growth fell short: the chain starts from the dense reference (one span with the chain)
    r = rows("seed", "grow", "shift", "dense", "prune", "select", "select")
    assert [s[0] for s in phase_spans(r)] == ["growth", "shift", "pruning chain", "selection (trial refits)"]


def test_history_plot_is_written_with_the_kept_network(tmp_path):
    path = tmp_path / "history.png"
    plot_history(str(path), rows("seed", "grow", "shift", "prune", "select"), "t", kept=4)
    assert path.stat().st_size > 1000 and path.read_bytes()[:4] == b"\x89PNG"
