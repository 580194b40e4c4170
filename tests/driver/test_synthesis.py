import json

import pytest
import torch

from nestir.driver import phases
from nestir.driver.data import Dataset
from nestir.driver.phases import scan_start
from nestir.driver.pipelines import pruning_pipeline
from nestir.driver.runs import RunSpec, prepare
from nestir.driver.synthesis import SynthConfig, Synthesizer, sparsify_seed
from nestir.frontend.tracer import trace
from nestir.ir.errors import NestirError
from nestir.ir.serialize import load_graph

FAST = {"initial_epochs": 1, "epochs": 1, "shift_epochs": 1, "prune_epochs": 1, "max_growth_steps": 2,
        "max_prune_steps": 3, "grow_neurons": 4, "target_accuracy": 0.99, "final_epochs": 1, "trial_epochs": 1}


class StopWhen:
    """A reporter that interrupts the run (as Ctrl-C would) at the first step row ``stop`` accepts."""

    def __init__(self, stop):
        self.stop = stop

    def phase(self, *a):
        pass

    def epoch(self, *a):
        pass

    def message(self, *a):
        pass

    def step(self, row):
        if self.stop(row):
            raise KeyboardInterrupt


def small_prep():
    prep = prepare(RunSpec(model="lenet-300-100", val_fraction=0.1))
    prep.splits.train = Dataset(prep.train.x[:600], prep.train.y[:600], "small")
    return prep


def test_seed_is_sparse_and_has_no_islands():
    prep = small_prep()
    for n in prep.graph.parametric():
        m = n.params["mask"]
        assert 0.4 < float(m.float().mean()) < 0.6
        assert bool(m.any(1).all()) and bool(m.any(0).all())


def test_grow_then_prune(tmp_path):
    prep = small_prep()
    cfg = SynthConfig(**{**prep.defaults, **FAST})
    s = Synthesizer(prep.graph, prep.splits, cfg, str(tmp_path))
    st = s.run()
    phases = [r["phase"] for r in st.history]
    assert phases[0] == "seed" and "shift" in phases
    first_prune = phases.index("shift")
    assert all(p == "grow" for p in phases[1:first_prune])
    rest = phases[first_prune + 1:]
    assert rest == sorted(rest, key=["prune", "select"].index)  # growth once, the pruning chain, the selection
    assert all(not r["accepted"] for r in st.history if r["phase"] == "prune")  # the chain decides nothing
    grow = [r["params"] for r in st.history[: first_prune + 1]]
    assert grow == sorted(grow) and grow[-1] > grow[0]
    assert not st.target_reached  # 99% is out of reach here, and the run says so
    assert all(n.attrs["kind"] == "relu" for n in s.graph if n.op == "act")


def test_interrupted_run_resumes(tmp_path):
    prep = small_prep()
    cfg = SynthConfig(**{**prep.defaults, **FAST})

    steps = iter(range(1, 10**6))
    with pytest.raises(KeyboardInterrupt):
        Synthesizer(prep.graph.copy(), prep.splits, cfg, str(tmp_path),
                    reporter=StopWhen(lambda row: next(steps) == 3)).run()
    ck = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert len(ck["state"]["history"]) == 2  # the interrupted step was not half-saved
    s = Synthesizer.resume(str(tmp_path), prep.splits)
    st = s.run()
    assert st.phase == "done" and len(st.history) > 3
    assert [r["step"] for r in st.history] == list(range(len(st.history)))


def test_budget_smaller_than_seed_and_bad_density():
    prep = small_prep()
    with pytest.raises(NestirError, match="smaller than the seed"):
        Synthesizer(prep.graph, prep.splits, SynthConfig(max_params=10, target_accuracy=0.9), "/tmp/x")
    with pytest.raises(NestirError, match="seed-density"):
        sparsify_seed(prep.graph, 1.5, 0)


def test_cli_synthesize_writes_the_contract(tmp_path, capsys):
    from nestir.cli import main

    out = tmp_path / "run"
    argv = ["synthesize", "lenet-300-100", "--out", str(out), "--quiet", "--initial-epochs", "1", "--epochs", "1",
            "--prune-epochs", "1", "--max-growth-steps", "1", "--max-prune-steps", "1", "--dense-epochs", "1",
            "--final-epochs", "1", "--shift-epochs", "1", "--trial-epochs", "1",
            "--test-data", "mnist-idx:../shared/data/mnist"]
    import os

    if not os.path.isdir("../shared/data/mnist"):
        argv = argv[:-2]
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    for key in ("params", "flops", "val_error", "test_error", "audit_error", "error_estimate"):
        assert key in report["final"] and key in report["baseline"]  # the dense reference is always trained
    est = report["final"]["error_estimate"]
    assert est["ci95"][0] <= est["error"] <= est["ci95"][1] and est["n"] == 500 and "audit" in est["method"]
    assert "paired" in report["rule"] and report["seed"] == 0
    res = report["resolution"]  # what the validation images could resolve in the selection
    if res is not None:  # (None when the chain had no step to judge)
        assert res["val_images"] == 1000 and res["judged"] >= 1 and 0 < res["median_se"] < 0.1
        assert abs(res["passes_at_most"] - (res["tolerance"] - res["z"] * res["median_se"])) < 1e-12
    assert report["phases"] and {"phase", "params", "flops", "val_error"} <= set(report["phases"][0])
    assert 0 < report["wall_seconds"] <= report["command_seconds"]
    for f in ("model.onnx", "model.pt", "history.csv", "history.png", "first_layer.png"):
        assert (out / f).exists()
    g, _ = load_graph(str(out / "model.pt"))
    assert report["final"]["params"] == __import__("nestir").stats(g)["params"]
    assert main(argv) == 2  # refuses to overwrite a run without --force
    assert "already holds a run" in capsys.readouterr().err


def test_tampered_checkpoint_is_refused(tmp_path):
    prep = small_prep()
    cfg = SynthConfig(**{**prep.defaults, **FAST, "max_prune_steps": 0, "max_growth_steps": 0})
    Synthesizer(prep.graph, prep.splits, cfg, str(tmp_path)).run()
    ck = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    clean = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    ck["graph"]["nodes"][2]["params"]["weight"][0, 0] += 1
    torch.save(ck, tmp_path / "checkpoint.pt")
    with pytest.raises(NestirError, match="integrity"):
        Synthesizer.resume(str(tmp_path), prep.splits)
    good = dict(clean)
    torch.save(good, tmp_path / "checkpoint.pt")
    Synthesizer.resume(str(tmp_path), prep.splits)  # the untouched checkpoint resumes
    for key, bad in (("lr", 1e6), ("rng", ck["rng"].clone().index_fill_(0, torch.tensor([7]), 3))):
        torch.save({**good, key: bad}, tmp_path / "checkpoint.pt")  # learning rate and RNG state are covered
        with pytest.raises(NestirError, match="integrity"):
            Synthesizer.resume(str(tmp_path), prep.splits)
    (tmp_path / "checkpoint.pt").write_bytes(b"garbage")
    with pytest.raises(NestirError, match="corrupt"):
        Synthesizer.resume(str(tmp_path), prep.splits)


def test_teacher_decides_and_distils_then_refit(tmp_path):
    """With a dense teacher: paired decisions, distillation, the kept network refit on train +
    validation; the checkpoint holds the teacher and resumes into the same state."""
    from nestir.driver.runs import dense_reference

    prep = small_prep()
    spec = RunSpec(model="lenet-300-100")
    cfg = SynthConfig(**{**prep.defaults, **FAST, "target_accuracy": 0.0, "final_epochs": 1, "max_prune_steps": 2})
    dense = dense_reference(prep, spec, cfg, dense_epochs=1)
    assert dense["final"]["params"] == 266610 and "audit_error" in dense["final"]
    s = Synthesizer(prep.graph, prep.splits, cfg, str(tmp_path), teacher=dense["teacher"])
    assert s.reference is not None and s.reference.shape == (len(prep.val),)
    assert s.soft is not None
    st = s.run()
    assert st.phase == "done" and "paired" in st.rule
    assert all("vs reference" in r["note"] for r in st.history)
    kept = s.selection
    assert kept["accepted"] and kept["params"] >= s.state.history[-1]["params"] - 10**9
    ck = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ck["teacher"] is not None and ck["reference"].shape == (len(prep.val),)
    again = Synthesizer.resume(str(tmp_path), prep.splits)
    assert again.state.phase == "done" and torch.equal(again.reference, s.reference)


def test_pruning_only_uses_the_same_loop(tmp_path):
    from nestir.driver.runs import dense_reference

    prep = small_prep()
    cfg = SynthConfig(**{**prep.defaults, **FAST, "target_accuracy": 0.0, "method": "prune", "final_epochs": 0,
                         "max_prune_steps": 2, "prune_fraction": 0.5, "prune_scope": "global"})
    dense = dense_reference(prep, RunSpec(model="lenet-300-100"), cfg, dense_epochs=1)
    s = Synthesizer(dense["teacher"].copy(), prep.splits, cfg, str(tmp_path), teacher=dense["teacher"])
    st = s.run()
    assert [r["phase"] for r in st.history][0] == "dense"
    assert {r["phase"] for r in st.history} <= {"dense", "prune", "select"}
    pipe = pruning_pipeline(s.cfg, s.graph)
    assert "magnitude-prune" in pipe[0] and "neuron_fraction" not in pipe[0]
    assert nestir_params(s.graph) <= 266610


def nestir_params(g):
    from nestir.ir.stats import stats

    return stats(g)["params"]


def test_bad_options_are_refused_before_work():
    for bad in ({"prune_fraction": 2.0}, {"lr": float("nan")}, {"batch_size": 0}, {"epochs": -1},
                {"method": "magic"}, {"confidence": -1.0}, {"distill": 1.5}, {"max_flops": -1},
                {"epoch_samples": -1}):
        with pytest.raises(NestirError):
            SynthConfig(**bad).check()
    for bad in ({"max_val": -1}, {"max_audit": -5}):
        with pytest.raises(NestirError, match="max-val and --max-audit"):
            prepare(RunSpec(model="lenet-300-100", **bad))


def test_seed_changes_split_and_initialization():
    a, b = prepare(RunSpec(model="lenet-300-100", seed=0)), prepare(RunSpec(model="lenet-300-100", seed=5))
    assert not torch.equal(a.val.y, b.val.y)
    wa = a.graph.parametric()[0].params["weight"]
    wb = b.graph.parametric()[0].params["weight"]
    assert not torch.equal(wa, wb)
    a2 = prepare(RunSpec(model="lenet-300-100", seed=0))
    assert torch.equal(a.val.y, a2.val.y) and torch.equal(wa, a2.graph.parametric()[0].params["weight"])
    # the three splits are disjoint and cover the data
    n = len(a.splits.train) + len(a.val) + len(a.splits.audit)
    assert n == 5000 and len(a.splits.audit) == 500


def test_cli_seed_reaches_the_run(tmp_path):
    from nestir.cli import build_parser
    from nestir.cli.run import _run_spec

    args = build_parser().parse_args(["synthesize", "lenet-300-100", "--seed", "5"])
    assert _run_spec(args).seed == 5
    args = build_parser().parse_args(["prune-baseline", "lenet-5", "--seed", "3"])
    assert _run_spec(args).seed == 3


def test_resume_after_growth_overshot_the_budget(tmp_path):
    """The last growth step may end above S; such a checkpoint must still resume."""
    from nestir.ir.stats import stats

    prep = small_prep()
    budget = stats(prep.graph)["params"] + 50
    cfg = SynthConfig(**{**prep.defaults, **FAST, "max_params": budget, "max_growth_steps": 1,
                         "max_prune_steps": 0})
    s = Synthesizer(prep.graph, prep.splits, cfg, str(tmp_path))
    st = s.run()
    assert max(r["params"] for r in st.history) > budget  # bridged neurons overshoot a tight budget
    again = Synthesizer.resume(str(tmp_path), prep.splits)
    assert again.state.phase == "done"


def test_chain_then_selection_keeps_the_smallest_passing_network(tmp_path):
    """The pruning chain saves every network; the selection scans it from the most pruned step
    down, judging each after a trial refit (pooled with the steps judged before it), and keeps the
    first that passes: the smallest; a tampered chain file is refused on resume; the chain's files
    are removed once the run is done."""
    from nestir.driver.runs import dense_reference

    prep = small_prep()
    cfg = SynthConfig(**{**prep.defaults, **FAST, "target_accuracy": 0.0, "method": "prune", "final_epochs": 1,
                         "max_prune_steps": 6, "prune_fraction": 0.5, "tolerance": 0.2, "chain_slack": 1.0,
                         "scan_slack": 1.0})
    dense = dense_reference(prep, RunSpec(model="lenet-300-100"), cfg, dense_epochs=1)

    s = Synthesizer(dense["teacher"].copy(), prep.splits, cfg, str(tmp_path), teacher=dense["teacher"],
                    reporter=StopWhen(lambda row: row["phase"] == "select"))
    with pytest.raises(KeyboardInterrupt):
        s.run()
    ck = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    chain = ck["state"]["chain"]
    assert ck["state"]["phase"] == "select" and len(chain) == 7
    sizes = [ck["state"]["history"][e["row"]]["params"] for e in chain]
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] < sizes[0] / 20
    f = tmp_path / chain[-1]["file"]  # the first step the scan judges
    good = f.read_bytes()
    state = torch.load(f, weights_only=True)
    next(n for n in state["nodes"] if "weight" in n["params"])["params"]["weight"].mul_(2)
    torch.save(state, f)
    with pytest.raises(NestirError, match="integrity"):
        Synthesizer.resume(str(tmp_path), prep.splits).run()
    f.write_bytes(good)
    s = Synthesizer.resume(str(tmp_path), prep.splits)
    st = s.run()
    probes = [r for r in st.history if r["phase"] == "select"]
    sizes = [r["params"] for r in probes]
    assert 1 <= len(probes) <= 6 and sizes == sorted(sizes)  # from the most pruned step up
    accepted = [r for r in probes if r["accepted"]]
    kept = s.selection
    assert len(accepted) <= 1 and kept == (accepted[0] if accepted else st.history[0])
    if accepted:  # the scan stops at the first confirmed step: only its confirming step comes after it
        i = probes.index(accepted[0])
        assert i == len(probes) - 1 or (i == len(probes) - 2 and "confirmed with chain step" in kept["note"])
    assert len(st.scan) == len(probes) and [e["index"] for e in st.scan] == list(range(6, 6 - len(probes), -1))
    res = s.resolution  # the median standard error of the selection's paired verdicts
    ses = sorted(e["se"] for e in st.scan)
    assert res["judged"] == len(probes) and res["val_images"] == len(prep.splits.val)
    assert res["median_se"] == ses[len(ses) // 2] and res["passes_at_most"] == 0.2 - res["z"] * res["median_se"]
    assert st.phase == "done" and not (tmp_path / "chain").exists()


def test_scan_starts_at_the_most_pruned_step_within_the_slack(tmp_path):
    prep = small_prep()
    cfg = SynthConfig(**{**prep.defaults, **FAST, "scan_slack": 0.01})
    s = Synthesizer(prep.graph, prep.splits, cfg, str(tmp_path))
    errs = [0.05, 0.052, 0.09, 0.058, 0.2]  # before refit; the target's error is 0.05
    s.state.target = 0.95
    params = [1000, 500, 250, 125, 60]
    s.state.history = [{"val_error": e, "params": n} for e, n in zip(errs, params, strict=True)]
    s.state.chain = [{"row": i} for i in range(len(errs))]
    assert scan_start(s) == 3  # the most pruned within 1 point, even past a worse step
    s.cfg.max_compression = 7.9  # step 3 is 8x smaller than the chain's start: never kept, so never judged
    assert scan_start(s) == 1
    s.cfg.max_compression = 8.0
    assert scan_start(s) == 3
    s.state.history = [{"val_error": e, "params": 100} for e in (0.05, 0.2, 0.3)]
    s.state.chain = [{"row": i} for i in range(3)]
    assert scan_start(s) == 0


def test_the_zoo_lenet5_keeps_at_most_120x():
    from nestir.driver.zoo import ZOO

    assert dict(ZOO["lenet-5"].defaults)["max_compression"] == 120.0
    assert "max_compression" not in dict(ZOO["lenet-300-100"].defaults)


def test_pooled_selection_accepts_a_step_whose_block_passes():
    """A chain step whose own paired bound fails but whose block with the more pruned steps judged
    before it passes is accepted (monotone curve: the block's mean bounds it from above)."""
    from nestir.driver.decide import paired, pooled

    g = torch.Generator().manual_seed(0)
    ref = torch.rand(1000, generator=g) < 0.05
    cands = [ref ^ (torch.rand(1000, generator=g) < 0.02) for _ in range(4)]  # each differs on ~20 images
    single = [paired(c, ref, z=1.0, tolerance=0.0025) for c in cands]
    block = pooled(cands, ref, z=1.0, tolerance=0.0025)
    assert abs(block.delta - sum(v.delta for v in single) / 4) < 1e-12
    assert block.se < min(v.se for v in single)  # independent disagreements average out
    assert pooled(cands[:1], ref, z=1.0) == paired(cands[0], ref, z=1.0)


def test_nothing_smaller_than_dense_passes_then_dense_ships(tmp_path):
    """A kept network at least as big as the dense reference (nothing smaller passed) is replaced
    by the dense reference itself."""
    from nestir.driver.runs import dense_reference

    prep = small_prep()
    cfg = SynthConfig(**{**prep.defaults, **FAST, "target_accuracy": 0.0, "method": "prune", "final_epochs": 0,
                         "max_prune_steps": 2, "prune_fraction": 0.5, "tolerance": 0.0, "confidence": 50.0})
    dense = dense_reference(prep, RunSpec(model="lenet-300-100"), cfg, dense_epochs=1)
    s = Synthesizer(dense["teacher"].copy(), prep.splits, cfg, str(tmp_path), teacher=dense["teacher"])
    st = s.run()
    probes = [r for r in st.history if r["phase"] == "select"]
    assert not any(r["accepted"] for r in probes[:-1]) and "dense reference" in probes[-1]["note"]
    assert s.selection is probes[-1]  # the report's selection estimate is the dense reference's
    assert nestir_params(s.graph) == 266610 and not st.target_reached


def test_a_network_with_more_flops_than_dense_is_never_kept(tmp_path):
    """"Smaller" means fewer parameters and no more FLOPs than the dense reference: chain steps that
    are not (here every one: the reference is sparser than any of them) are not even trial-refit,
    and the chain's start, no smaller either, gives way to the dense reference."""
    from nestir.driver.runs import dense_reference
    from nestir.ir.edit import set_mask

    prep = small_prep()
    cfg = SynthConfig(**{**prep.defaults, **FAST, "target_accuracy": 0.0, "method": "prune", "final_epochs": 0,
                         "max_prune_steps": 2, "prune_fraction": 0.5, "tolerance": 0.5, "confidence": 0.0,
                         "chain_slack": 1.0, "scan_slack": 1.0})
    ref = dense_reference(prep, RunSpec(model="lenet-300-100"), cfg, dense_epochs=1)["teacher"]
    start = ref.copy()
    g = torch.Generator().manual_seed(0)
    for n in ref.parametric():  # a reference with 10% of the weights: sparser than the chain's last step
        set_mask(ref, n.name, n.params["mask"] & (torch.rand(n.params["mask"].shape, generator=g) < 0.1))
    s = Synthesizer(start, prep.splits, cfg, str(tmp_path), teacher=ref)
    assert not s.smaller_than_dense({"params": 10**9, "flops": 0})
    assert not s.smaller_than_dense({"params": 1, "flops": 10**12})
    st = s.run()
    probes = [r for r in st.history if r["phase"] == "select"]
    assert len(probes) == 1 and "dense reference" in probes[0]["note"]  # no trial refit ran
    assert nestir_params(s.graph) == nestir_params(ref) and not st.target_reached


@pytest.mark.parametrize("budget", ["dense", "option"])
def test_growth_stops_at_the_flops_budget(tmp_path, budget):
    """Growth stops once a network has the dense reference's FLOPs (or ``max_flops``'s), before
    its step limit and its parameter budget: past it, it would build what the selection may not
    keep. Without a reference and without the option there is no FLOPs budget."""
    from nestir.driver.runs import dense_reference
    from nestir.ir.edit import set_mask
    from nestir.ir.stats import stats

    prep = small_prep()
    seed_flops = stats(prep.graph)["flops"]
    option = int(1.3 * seed_flops) if budget == "option" else 0
    cfg = SynthConfig(**{**prep.defaults, **FAST, "max_params": 10**7, "max_growth_steps": 4, "growth_patience": 0,
                         "max_prune_steps": 0, "final_epochs": 0, "shift_epochs": 0, "recover_epochs": 0,
                         "max_flops": option})
    teacher = None
    if budget == "dense":  # a sparse reference: ~1.5x the seed's FLOPs, less than its first growth step adds
        teacher = dense_reference(prep, RunSpec(model="lenet-300-100"), cfg, dense_epochs=0)["teacher"]
        keep = 1.5 * seed_flops / stats(teacher)["flops"]
        g = torch.Generator().manual_seed(0)
        for n in teacher.parametric():
            set_mask(teacher, n.name, n.params["mask"] & (torch.rand(n.params["mask"].shape, generator=g) < keep))
    limit = option or stats(teacher)["flops"]
    assert seed_flops < limit
    st = Synthesizer(prep.graph, prep.splits, cfg, str(tmp_path), teacher=teacher).run()
    grown = [r for r in st.history if r["phase"] == "grow"]
    assert st.growth_stopped == "FLOPs budget reached"
    assert 1 <= len(grown) < 4 and grown[-1]["flops"] >= limit
    assert all(r["flops"] < limit for r in grown[:-1])

    free = Synthesizer(prep.graph, prep.splits, SynthConfig(**{**cfg.to_dict(), "max_flops": 0}),
                       str(tmp_path / "free"))
    assert free.flops_budget() == 0


@pytest.mark.parametrize("fallback", [True, False, "point_ok"])
def test_growth_short_of_dense_prunes_the_dense_reference(tmp_path, fallback):
    """A grown network that fails the paired rule against the dense reference: by default the
    pruning chain starts from the dense reference (its accuracy is the rule's), also when only the
    bound fails (the point estimate is within the tolerance: the bar is never lowered); with the
    fallback off, from the grown network, which then becomes the reference."""
    from nestir.driver.runs import dense_reference

    prep = small_prep()
    cfg = SynthConfig(**{**prep.defaults, **FAST, "target_accuracy": 0.0, "final_epochs": 0, "max_growth_steps": 0,
                         "max_prune_steps": 1, "initial_epochs": 0, "shift_epochs": 0, "recover_epochs": 0,
                         "tolerance": 0.0, "confidence": 50.0,
                         "fallback_dense": bool(fallback)})  # an untrained seed: far worse than dense
    dense = dense_reference(prep, RunSpec(model="lenet-300-100"), cfg, dense_epochs=1)
    # "point_ok": the seed is the dense reference itself, untrained further: no error difference,
    # but a bound of 50 standard errors above it
    seed = dense["teacher"].copy() if fallback == "point_ok" else prep.graph
    s = Synthesizer(seed, prep.splits, cfg, str(tmp_path), teacher=dense["teacher"])
    st = s.run()
    shift = next(i for i, r in enumerate(st.history) if r["phase"] == "shift")
    assert not st.history[shift]["accepted"] and not st.target_reached
    start = st.history[shift + 1]
    if fallback:
        assert start["phase"] == "dense" and start["params"] == 266610
        assert "dense reference" in st.history[shift]["note"]
    else:
        assert start["phase"] == "prune" and start["params"] < st.history[shift]["params"]
        assert "becomes the reference" in st.history[shift]["note"]


@pytest.mark.parametrize("case", ["behind", "no_fallback", "level", "level_from_dense"])
def test_growth_that_passes_behind_dense_prunes_the_dense_reference(tmp_path, case):
    """A grown network that passes the rule but is less accurate than the dense reference on
    validation starts no chain: the dense reference does (the chain keeps the whole tolerance);
    growth still reached the target. A grown network as accurate as the reference, or the
    fallback off, starts the chain itself, unless ``chain_from_dense`` asks for the dense one
    (a run resumed mid-growth: a new one skips growth)."""
    from nestir.driver.runs import dense_reference

    prep = small_prep()
    cfg = SynthConfig(**{**prep.defaults, **FAST, "target_accuracy": 0.0, "final_epochs": 0, "max_growth_steps": 0,
                         "max_prune_steps": 1, "initial_epochs": 0, "shift_epochs": 0, "recover_epochs": 0,
                         "tolerance": 0.99, "confidence": 0.0,  # every network passes
                         "fallback_dense": case != "no_fallback", "chain_from_dense": case == "level_from_dense"})
    dense = dense_reference(prep, RunSpec(model="lenet-300-100"), cfg, dense_epochs=1)
    seed = dense["teacher"].copy() if case.startswith("level") else prep.graph  # untrained: far behind dense
    s = Synthesizer(seed, prep.splits, cfg, str(tmp_path), teacher=dense["teacher"])
    if case == "level_from_dense":  # a run that was growing when it stopped, resumed with --chain-from-dense
        s.cfg.chain_from_dense = False
        s._t0 = 0.0  # (run() sets it)
        phases.start(s)
        s.cfg.chain_from_dense = True
    st = s.run()
    shift = next(i for i, r in enumerate(st.history) if r["phase"] == "shift")
    assert st.history[shift]["accepted"] and st.target_reached
    start = st.history[shift + 1]
    if case == "behind":
        assert start["phase"] == "dense" and start["params"] == 266610
        assert "less accurate than the dense reference" in st.history[shift]["note"]
    elif case == "level_from_dense":
        assert start["phase"] == "dense" and start["params"] == 266610
        assert "--chain-from-dense" in st.history[shift]["note"]
    else:
        assert start["phase"] == "prune"
        assert "less accurate" not in st.history[shift]["note"]


def test_chain_from_dense_skips_growth(tmp_path):
    """``--chain-from-dense``: the chain starts from the dense reference whatever growth reaches,
    so NeST does not grow: its first row is the dense reference, the report says why growth
    stopped, and the chain prunes the dense network."""
    from nestir.driver.runs import dense_reference

    prep = small_prep()
    cfg = SynthConfig(**{**prep.defaults, **FAST, "target_accuracy": 0.0, "final_epochs": 0, "max_growth_steps": 5,
                         "max_prune_steps": 2, "tolerance": 0.99, "chain_from_dense": True})
    dense = dense_reference(prep, RunSpec(model="lenet-300-100"), cfg, dense_epochs=1)
    s = Synthesizer(prep.graph, prep.splits, cfg, str(tmp_path), teacher=dense["teacher"])
    st = s.run()
    assert [r["phase"] for r in st.history if r["phase"] in ("seed", "grow", "shift")] == []
    assert st.history[0]["phase"] == "dense" and st.history[0]["params"] == 266610
    assert "--chain-from-dense" in st.history[0]["note"] and "--chain-from-dense" in st.growth_stopped
    assert st.history[1]["phase"] == "prune" and st.history[1]["params"] < 266610


def test_soft_targets_average_the_teachers_logits():
    """``--teachers K``: the students learn from the mean of the K dense networks' logits."""
    from nestir.backends.train import logits
    from nestir.driver.recipe import SoftTargets

    torch.manual_seed(0)
    a = trace(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)), torch.zeros(2, 1, 4, 4))
    b = trace(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)), torch.zeros(2, 1, 4, 4))
    x = torch.rand(5, 1, 4, 4)
    data = Dataset(x, torch.zeros(5, dtype=torch.long), "t")
    got = SoftTargets([a, b], data, torch.device("cpu")).on(x, augmented=False)
    want = (logits(a, x) + logits(b, x)) / 2
    torch.testing.assert_close(got, want)
    with pytest.raises(NestirError, match="teachers"):
        SynthConfig(teachers=0).check()


def test_a_chain_step_that_removes_nothing_ends_the_chain(tmp_path):
    from nestir.driver.runs import dense_reference

    prep = small_prep()
    # a fraction so small that a step removes no connection: the chain ends after its first step
    cfg = SynthConfig(**{**prep.defaults, **FAST, "target_accuracy": 0.0, "method": "prune", "final_epochs": 0,
                         "max_prune_steps": 5, "prune_fraction": 1e-9, "prune_flops": 0.0, "prune_scope": "global"})
    dense = dense_reference(prep, RunSpec(model="lenet-300-100"), cfg, dense_epochs=1)
    msgs = []
    rep = StopWhen(lambda row: False)
    rep.message = msgs.append
    st = Synthesizer(dense["teacher"].copy(), prep.splits, cfg, str(tmp_path), teacher=dense["teacher"],
                     reporter=rep).run()
    assert [r["phase"] for r in st.history].count("prune") == 1
    assert any("nothing left to prune" in m for m in msgs)


def test_a_chain_that_starts_behind_the_flops_pace_cuts_flops_faster(tmp_path):
    """A chain from a network with the dense reference's FLOPs and far fewer parameters (what
    growth makes of a convnet) cuts twice the configured FLOPs fraction per step, and says so."""
    from nestir.driver.runs import dense_graph

    prep = prepare(RunSpec(model="lenet-5", val_fraction=0.1))
    prep.splits.train = Dataset(prep.train.x[:300], prep.train.y[:300], "small")
    dense = dense_graph(prep, RunSpec(model="lenet-5"))
    start = dense.copy()
    gen = torch.Generator().manual_seed(0)
    for n in start.parametric():
        if n.op == "linear":  # most parameters, few FLOPs: a quarter of them kept
            m = n.params["mask"]
            m.mul_((torch.rand(m.shape, generator=gen) < 0.25).to(m.dtype))
    cfg = SynthConfig(**{**prep.defaults, **FAST, "method": "prune", "target_accuracy": 0.0, "final_epochs": 0,
                         "max_prune_steps": 2, "distill": 0.0})
    st = Synthesizer(start, prep.splits, cfg, str(tmp_path), teacher=dense).run()
    rows = [r for r in st.history if r["phase"] in ("dense", "prune")]
    assert [r["phase"] for r in rows] == ["dense", "prune", "prune"]
    for before, after in zip(rows, rows[1:], strict=False):
        assert "FLOPs cut at least 16%" in after["note"]
        assert after["flops"] <= 0.84 * before["flops"] + 1
