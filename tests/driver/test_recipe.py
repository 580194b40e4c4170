import math

import torch

import nestir
from nestir.backends.train import Trainer
from nestir.driver.data import Dataset
from nestir.driver.recipe import Recipe, SoftTargets, stint
from nestir.driver.zoo import LeNet300100


class Counting(Trainer):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.seen: list[torch.Tensor] = []
        self.soft_seen: list[torch.Tensor | None] = []

    def epoch(self, x, y, batch_size=128, *, generator=None, progress=None, soft=None):
        self.seen.append(y.clone())
        self.soft_seen.append(soft)
        return 0.0


def data(n: int) -> Dataset:
    return Dataset(torch.rand(n, 1, 28, 28), torch.arange(n) % 10, "d")


def test_an_epoch_of_large_data_is_a_fresh_draw_of_epoch_samples():
    g = nestir.trace(LeNet300100(), torch.zeros(2, 1, 28, 28))
    d = Dataset(torch.rand(100, 1, 28, 28), torch.arange(100), "d")  # labels name the samples
    t = Counting(g)
    stint(t, d, 3, Recipe(epoch_samples=30), torch.Generator().manual_seed(0))
    assert [len(s) for s in t.seen] == [30, 30, 30]
    assert all(len(set(s.tolist())) == 30 for s in t.seen)  # without replacement within an epoch
    assert len({tuple(sorted(s.tolist())) for s in t.seen}) == 3  # a fresh draw each epoch


def test_small_data_and_zero_keep_full_passes():
    g = nestir.trace(LeNet300100(), torch.zeros(2, 1, 28, 28))
    d = data(40)
    for rec in (Recipe(epoch_samples=40), Recipe(epoch_samples=1000), Recipe(epoch_samples=0)):
        t = Counting(g.copy())
        stint(t, d, 2, rec, torch.Generator().manual_seed(0))
        assert all(torch.equal(s, d.y) for s in t.seen)  # the split itself, in order (the trainer shuffles)


def test_soft_targets_follow_the_drawn_samples():
    g = nestir.trace(LeNet300100(), torch.zeros(2, 1, 28, 28))
    d = Dataset(torch.rand(50, 1, 28, 28), torch.arange(50) % 10, "d")
    soft = SoftTargets(g, d, torch.device("cpu"))
    full = soft.on(d.x, False)
    t = Counting(g.copy())
    gen = torch.Generator().manual_seed(1)
    stint(t, d, 2, Recipe(epoch_samples=20, alpha=0.5), gen, soft=soft)
    # replay the draws: each epoch's soft targets are the teacher's logits of exactly its samples
    gen = torch.Generator().manual_seed(1)
    for s in t.soft_seen:
        idx = torch.randperm(50, generator=gen)[:20]
        torch.testing.assert_close(s, full[idx])


def test_teachers_from_first_are_the_same_networks_as_the_whole_ensemble():
    """``first=1``: the teachers after the reference, trained exactly as a whole ensemble trains them
    (what a benchmark with a cached reference relies on)."""
    from nestir.driver.recipe import train_teachers

    d = data(64)

    def make(i: int) -> nestir.Graph:
        return nestir.trace(LeNet300100(), torch.zeros(2, 1, 28, 28))

    rec = Recipe(epoch_samples=0)
    whole = train_teachers(3, make, d, 1, 1, rec, 5)
    rest = train_teachers(3, make, d, 1, 1, rec, 5, first=1)
    assert len(rest) == 2
    for a, b in zip(whole[1:], rest, strict=True):
        assert torch.allclose(a["fc1"].params["weight"], b["fc1"].params["weight"], atol=1e-6)
    assert not torch.allclose(whole[0]["fc1"].params["weight"], rest[0]["fc1"].params["weight"])


class Phases:
    """A reporter that records each phase's name and epoch count."""

    def __init__(self) -> None:
        self.phases: list[tuple[str, int | None]] = []

    def phase(self, name, total=None):
        self.phases.append((name, total))

    def epoch(self, done, total, loss):
        pass

    def step(self, row):
        pass

    def message(self, text):
        pass


def test_teachers_after_the_reference_take_their_own_final_budget():
    """The reference always gets the final training every method gets; the networks that only
    teach get ``teacher_final_epochs`` (0: none) and are otherwise trained as before."""
    from nestir.driver.recipe import train_teachers

    d = data(64)

    def make(i: int) -> nestir.Graph:
        return nestir.trace(LeNet300100(), torch.zeros(2, 1, 28, 28))

    rec = Recipe(epoch_samples=0)
    rep = Phases()
    short = train_teachers(3, make, d, 1, 2, rec, 5, teacher_final_epochs=0, reporter=rep)
    assert rep.phases == [("dense training", 1), ("dense final training", 2),
                          ("dense teacher 2/3 training", 1), ("dense teacher 3/3 training", 1)]
    whole = train_teachers(3, make, d, 1, 2, rec, 5)
    # the reference is the same network either way; the teachers stop before their final training
    assert torch.allclose(short[0]["fc1"].params["weight"], whole[0]["fc1"].params["weight"], atol=1e-6)
    assert not torch.allclose(short[1]["fc1"].params["weight"], whole[1]["fc1"].params["weight"])
    rep = Phases()
    train_teachers(2, make, d, 1, 2, rec, 5, teacher_final_epochs=3, reporter=rep)
    assert rep.phases[-1] == ("dense teacher 2/2 final training", 3)


def test_teacher_augment_distorts_the_teachers_images_only(monkeypatch):
    """``teacher_augment``: the networks after the first train on distorted images; the
    reference's training, and so the reference, is exactly what it is without the option."""
    import nestir.driver.recipe as recipe_mod

    calls: list[int] = []
    real = recipe_mod.affine_augment

    def counted(x, gen=None):
        calls.append(x.shape[0])
        return real(x, gen)

    monkeypatch.setattr(recipe_mod, "affine_augment", counted)
    d = data(64)

    def make(i: int) -> nestir.Graph:
        return nestir.trace(LeNet300100(), torch.zeros(2, 1, 28, 28))

    rec = Recipe(epoch_samples=0)
    plain = recipe_mod.train_teachers(2, make, d, 1, 1, rec, 5)
    assert calls == []
    aug = recipe_mod.train_teachers(2, make, d, 1, 1, rec, 5, teacher_augment=True)
    assert calls == [64, 64]  # the second network's two epochs, none of the reference's
    assert torch.allclose(aug[0]["fc1"].params["weight"], plain[0]["fc1"].params["weight"], atol=1e-6)
    assert not torch.allclose(aug[1]["fc1"].params["weight"], plain[1]["fc1"].params["weight"], atol=1e-4)


def test_augmentation_of_inputs_that_are_not_images_is_refused_by_name():
    import pytest

    from nestir.driver.data import DataError, affine_augment

    with pytest.raises(DataError, match=r"images shaped \(N, C, H, W\).*\(8, 20\)"):
        affine_augment(torch.rand(8, 20))
    # teachers on distorted flat inputs: refused before the reference trains
    from nestir.driver.recipe import train_teachers

    trained: list[int] = []

    def make(i: int) -> nestir.Graph:
        trained.append(i)
        return nestir.trace(LeNet300100(), torch.zeros(2, 1, 28, 28))

    flat = Dataset(torch.rand(16, 784), torch.arange(16) % 10, "flat")
    with pytest.raises(DataError, match="images shaped"):
        train_teachers(3, make, flat, 1, 1, Recipe(epoch_samples=0), 5, teacher_augment=True)
    assert trained == []


class LrLog(Counting):
    def epoch(self, x, y, batch_size=128, *, generator=None, progress=None, soft=None):
        self.seen.append(self.lr)
        return 0.0


def test_anneal_runs_from_the_start_rate_toward_the_floor_and_restores_it():
    g = nestir.trace(LeNet300100(), torch.zeros(2, 1, 28, 28))
    for floor in (0.1, 0.01):
        t = LrLog(g.copy(), lr=1e-2)
        stint(t, data(20), 8, Recipe(floor=floor), torch.Generator().manual_seed(0), anneal=True)
        lrs = list(t.seen)
        assert lrs[0] == 1e-2 and all(a > b for a, b in zip(lrs, lrs[1:], strict=False))
        # the last epoch is one step short of the floor: cos(7/8 pi)
        assert abs(lrs[-1] - 1e-2 * (floor + (1 - floor) / 2 * (1 + math.cos(math.pi * 7 / 8)))) < 1e-12
        assert lrs[-1] < 1e-2 * (floor + 0.04)
        assert t.lr == 1e-2
