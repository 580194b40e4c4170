import argparse

from nestir.cli.run import _config
from nestir.driver.runs import RunSpec, prepare
from nestir.driver.synthesis import SynthConfig
from nestir.driver.zoo import ZOO


def test_every_zoo_preset_names_a_synthesis_option():
    fields = set(SynthConfig.__dataclass_fields__)
    for name, entry in ZOO.items():
        for key, _ in entry.defaults:
            assert key in fields, f"{name}: {key}"


def test_a_zoo_preset_is_a_default_the_command_line_overrides(monkeypatch):
    import nestir.driver.runs as runs
    from nestir.driver.zoo import ZooEntry

    e = ZOO["lenet-300-100"]
    monkeypatch.setitem(runs.ZOO, "lenet-300-100", ZooEntry(e.factory, e.input_shape, e.description,
                                                            defaults=(("teacher_final_epochs", 0),)))
    prep = prepare(RunSpec(model="lenet-300-100", data="mnist5k"))
    assert prep.defaults["teacher_final_epochs"] == 0
    assert _config(argparse.Namespace(), prep.defaults, "nest").teachers_final() == 0
    assert _config(argparse.Namespace(teacher_final_epochs=7), prep.defaults, "nest").teachers_final() == 7


def test_lenet5_teachers_skip_the_final_training_unless_the_command_line_says_otherwise():
    prep = prepare(RunSpec(model="lenet-5", data="mnist5k"))
    assert prep.defaults["teacher_final_epochs"] == 0
    assert _config(argparse.Namespace(), prep.defaults, "nest").teachers_final() == 0
    assert _config(argparse.Namespace(teacher_final_epochs=80), prep.defaults, "prune").teachers_final() == 80
    other = prepare(RunSpec(model="lenet-300-100", data="mnist5k"))
    assert "teacher_final_epochs" not in other.defaults
    assert _config(argparse.Namespace(), other.defaults, "nest").teachers_final() == SynthConfig().final_epochs


def test_the_lenets_teachers_train_on_distorted_digits_unless_the_command_line_says_otherwise():
    from nestir.cli import build_parser

    for model in ("lenet-300-100", "lenet-5"):
        prep = prepare(RunSpec(model=model, data="mnist5k"))
        assert _config(argparse.Namespace(), prep.defaults, "nest").teacher_augment is True
        args = build_parser().parse_args(["synthesize", model, "--no-teacher-augment"])
        assert _config(args, prep.defaults, "nest").teacher_augment is False
    assert SynthConfig().teacher_augment is False  # any other model: off


def test_the_lenets_ask_for_equal_accuracy_unless_the_command_line_says_otherwise():
    from nestir.cli import build_parser

    for model, tol in (("lenet-300-100", 0.0), ("lenet-5", 0.0015)):
        prep = prepare(RunSpec(model=model, data="mnist5k"))
        assert _config(argparse.Namespace(), prep.defaults, "nest").tolerance == tol
        args = build_parser().parse_args(["synthesize", model, "--tolerance", "0.0025"])
        assert _config(args, prep.defaults, "nest").tolerance == 0.0025
    assert SynthConfig().tolerance == 0.0025  # any other model: 0.25 points
    assert "tolerance" not in dict(ZOO["resnet-cifar"].defaults)


def test_lenet5_chains_from_dense_unless_the_command_line_says_otherwise():
    from nestir.cli import build_parser

    prep = prepare(RunSpec(model="lenet-5", data="mnist5k"))
    assert _config(argparse.Namespace(), prep.defaults, "nest").chain_from_dense is True
    args = build_parser().parse_args(["synthesize", "lenet-5", "--chain-from-grown"])
    assert _config(args, prep.defaults, "nest").chain_from_dense is False
    other = prepare(RunSpec(model="lenet-300-100", data="mnist5k"))
    assert _config(argparse.Namespace(), other.defaults, "nest").chain_from_dense is False
    args = build_parser().parse_args(["synthesize", "lenet-300-100", "--chain-from-dense"])
    assert _config(args, other.defaults, "nest").chain_from_dense is True
