"""The synthesis run's configuration (:class:`SynthConfig`, every knob with a default that works
for the MNIST LeNets, checked before any work) and its state (:class:`RunState`, what a
checkpoint holds of the flow)."""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import Any

from nestir.backends import dist
from nestir.driver.recipe import Recipe
from nestir.ir.errors import ArgumentError
from nestir.passes.magnitude_prune import SCOPES
from nestir.passinfra.base import MAX_COUNT

log = logging.getLogger("nestir.driver.synthesis")

MAX_TEACHERS = 16
MAX_EPOCHS = 100_000  # per stint: anything above is a typo, refused before work starts


# Pruning only runs what practitioners run: gradual unstructured global magnitude pruning (10% per step).
# NeST's partial-area masks are off by default for both methods (``--partial-area F`` turns them on):
# measured on LeNet-5 (benchmarks/results/pareto.md and lenet5_partial_area_off.md), 10% per step cost
# enough accuracy that the selection stopped at 2-3x, against 12-15x without them.
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {"prune": {"partial_area": 0.0, "prune_neurons": 0.0}}


@dataclass
class SynthConfig:
    """Every knob of a synthesis run (all have defaults that work for the MNIST LeNets)."""

    method: str = "nest"  # "nest": grow, shift, prune; "prune": pruning only, from the dense reference
    max_params: int = 0  # S; 0: the dense architecture's size (zoo) or 2x the model's
    max_flops: int = 0  # growth's FLOPs budget; 0: the dense reference's FLOPs (none without a reference)
    target_accuracy: float = 0.0  # A on the validation split; 0: decide by paired comparison with the dense reference
    initial_epochs: int = 3
    epochs: int = 2  # training after each growth step
    shift_epochs: int = 20  # training after the leaky ReLU -> ReLU shift (the grown network converges)
    prune_epochs: int = 3  # retraining after each pruning step of the chain
    trial_epochs: int = 20  # the trial refit (on train) of a chain network before it is judged
    max_trials: int = 10  # selection scan: one chain step at a time for this many, then striding 2, 4, ...
    final_epochs: int = 80  # the final training of the chosen network (on train)
    max_growth_steps: int = 20
    growth_patience: int = 2  # stop growing when this many steps in a row did not improve validation error
    max_prune_steps: int = 80  # the longest pruning chain (10% steps: 0.9^80, 4,600x fewer parameters)
    max_compression: float = 400.0  # the chain stops past this many times fewer parameters than its start,
    # and the selection keeps no network past it
    chain_slack: float = 0.015  # ... or after 2 networks in a row this much less accurate (before refit)
    scan_slack: float = 0.004  # the selection scan starts at the most pruned step at most this much less
    # accurate than the reference before its refit. 0.004 (was 0.01): in 19 full-MNIST runs (benchmarks/README.md,
    # "Where the selection scan starts") no step that came within +0.10 pts of the reference after its trial refit
    # had been more than +0.18 pts behind it before; 0.4 pts skips a third of the trials, none of them close
    grow_connections: float = 1.0  # grow-connection fraction (of live connections) per growth step
    grow_neurons: int = 30  # bridge-neuron count per FC layer per growth step
    grow_maps: int = 4  # add-feature-map count per conv layer per growth step
    grow_scope: str = "layer"  # grow-connection: top fraction per layer, or "global" across layers
    prune_fraction: float = 0.1  # magnitude-prune fraction per pruning step. 0.1 (was 0.2): measured on full MNIST
    # (LeNet-300-100, seeds 0-2, validation and audit only; benchmarks/README.md "Finer chain steps") the selection
    # kept 61x, 55x, 67x (was 45x, 56x, 45x) at the same pooled distance from dense: sizes 10% apart, not 20%, and
    # each network pruned more gently
    prune_neurons: float = 0.0  # magnitude-prune neuron_fraction per pruning step
    prune_flops: float = 0.08  # magnitude-prune flops_fraction: FLOPs fall at least this much per step (convs):
    # 0.08 against the parameters' 0.1 (as 0.16 against 0.2 before) makes FLOPs fall at 0.79x the parameters'
    # log-rate (25x fewer FLOPs by 60x fewer parameters). Measured on full MNIST (LeNet-5, benchmarks/README.md
    # "FLOPs probe"): cutting FLOPs as fast as the parameters pruned the convolutions as fast as the fully connected
    # layers and cost most of the accuracy the chain lost
    prune_scope: str = "global"  # magnitude-prune: "global" (the smallest |W*| across layers), "layer" (the same
    # fraction of each) or "lamp" (layer-adaptive scores, Lee et al. 2021). lamp measured on full MNIST (benchmarks/
    # README.md, "Chain probe"): LeNet-300-100 kept no more (median over six seeds 32x against 35x); LeNet-5 kept
    # fewer FLOPs off (18.6-27.8x against 21.2-39.3x): it spares small layers, and LeNet-5's convs are its small ones
    partial_area: float = 0.0  # partial-area-mask fraction per pruning step (convs; 0: off, the default)
    batch_size: int = 64
    epoch_samples: int = Recipe.epoch_samples  # an epoch: a pass over train, or a random draw of this many when it
    # holds more (0: always a full pass); every budget in epochs is then one in samples on large data
    lr: float = 2e-3
    prune_lr: float = 4e-3  # each pruning step's retraining starts here (cosine to a tenth): measured on full MNIST
    # (LeNet-300-100, six seeds, validation only; benchmarks/README.md "Pruning-step learning rate"), the chain's
    # ~55x networks came out 0.13 pts from dense after a trial refit at 4e-3, 0.23 at 2e-3, 0.28 at 1e-3 (the old
    # default; three seeds); 8e-3 was worse than 4e-3. Like learning-rate rewinding (Renda et al. 2020): a pruned
    # network recovers more with a large learning rate than with a fine-tuning one
    augment: bool = False
    seed: int = 0
    score_batches: int = 4
    recover_epochs: int = 4  # extra epochs after the shift while it is not accepted
    weight_decay: float = 5e-5  # L2 (through Adam): unused weights fade, so pruning finds them
    anneal: bool = True  # cosine learning-rate decay within the shift and pruning stints
    lr_floor: float = 0.1  # ... down to this fraction of the stint's starting rate
    distill: float = 0.7  # weight of the dense reference's soft targets in the loss (0: labels only)
    temperature: float = 4.0  # distillation temperature
    teachers: int = 3  # dense networks (seeds) whose averaged soft targets every stint distils from;
    # the first is the reference every decision compares with and the report's baseline. 3: measured on
    # full MNIST (LeNet-300-100, 3 dev seeds, validation and audit only; benchmarks/README.md, "Teacher
    # probe") the ensemble's students at 54x were 0.1 pts closer to the reference than one teacher's
    teacher_final_epochs: int | None = None  # final training of the dense networks after the first, which only
    # teach (None: final_epochs, as the reference gets)
    teacher_augment: bool = False  # the dense networks after the first (teachers only) train on randomly distorted
    # images; the reference, the baseline and every student keep the run's data as it is
    confidence: float = 1.0  # z of the one-sided bound in the paired acceptance rule
    tolerance: float = 0.0025  # accepted error above the dense reference (fraction), at that bound
    fallback_dense: bool = True  # grown network short of the rule, or passing it but less accurate than the dense
    # reference on validation: the pruning chain starts from the dense reference (False: from the grown network)
    chain_from_dense: bool = False  # the pruning chain starts from the dense reference even when the grown network
    # passes the rule and is as accurate (growth still runs and is reported; the zoo's LeNet-5 sets it)
    # a size target (0: none): the chain prunes until a network has at most this many parameters /
    # FLOPs, and the selection keeps the least pruned one within it (its accuracy is reported, not judged)
    target_params: int = 0
    target_flops: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def for_method(cls, method: str, **kw: Any) -> SynthConfig:
        """The defaults of ``method`` ("nest" or "prune"), overridden by ``kw``."""
        return cls(**{**METHOD_DEFAULTS.get(method, {}), "method": method, **kw})

    def teachers_final(self) -> int:
        """Final-training epochs of each dense network after the first (the teachers only)."""
        return self.final_epochs if self.teacher_final_epochs is None else self.teacher_final_epochs

    def recipe(self) -> Recipe:
        return Recipe(batch_size=self.batch_size, epoch_samples=self.epoch_samples, augment=self.augment,
                      anneal=self.anneal, floor=self.lr_floor, alpha=self.distill,
                      temperature=self.temperature)

    def check(self) -> None:
        """Refuse options that cannot work before any work starts."""
        if self.method not in ("nest", "prune"):
            raise ArgumentError(f"method must be 'nest' or 'prune', got {self.method!r}")
        for name in ("prune_fraction", "prune_neurons", "prune_flops", "partial_area", "distill"):
            v = getattr(self, name)
            if not (0 <= v < 1):
                raise ArgumentError(f"{name.replace('_', '-')} must be in [0, 1), got {v}")
        for name in ("lr", "prune_lr", "temperature"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ArgumentError(f"{name.replace('_', '-')} must be a positive number, got {v}")
        for name in ("initial_epochs", "epochs", "shift_epochs", "prune_epochs", "final_epochs", "trial_epochs",
                     "max_growth_steps", "max_prune_steps", "recover_epochs", "grow_neurons", "grow_maps",
                     "max_flops", "target_params", "target_flops"):
            if getattr(self, name) < 0:
                raise ArgumentError(f"{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        for name in ("initial_epochs", "epochs", "shift_epochs", "prune_epochs", "final_epochs", "trial_epochs",
                     "recover_epochs"):
            if getattr(self, name) > MAX_EPOCHS:
                raise ArgumentError(f"{name.replace('_', '-')} {getattr(self, name)} is out of range "
                                  f"(at most {MAX_EPOCHS:,})")
        t = self.teacher_final_epochs
        if t is not None and (isinstance(t, bool) or not isinstance(t, int) or not 0 <= t <= MAX_EPOCHS):
            raise ArgumentError(f"teacher-final-epochs must be an integer in [0, {MAX_EPOCHS:,}], got {t!r}")
        for name in ("grow_neurons", "grow_maps"):  # else refused only after the dense reference trained
            if getattr(self, name) > MAX_COUNT:
                raise ArgumentError(f"{name.replace('_', '-')} {getattr(self, name)} is out of range (at most "
                                  f"{MAX_COUNT:,} per layer and step)")
        if not (math.isfinite(self.lr_floor) and 0 <= self.lr_floor <= 1):
            raise ArgumentError(f"lr-floor must be in [0, 1] (a fraction of each stint's starting rate), "
                                f"got {self.lr_floor}")
        ta = self.target_accuracy
        if ta != 0 and not (math.isfinite(ta) and 0 < ta <= 1):
            raise ArgumentError(f"target-accuracy must be in (0, 1] (default 0: the paired rule), got {ta}")
        if self.epoch_samples < 0:
            raise ArgumentError(f"epoch-samples must be >= 0 (0: every epoch a full pass), got {self.epoch_samples}")
        if self.batch_size < 1:
            raise ArgumentError(f"batch-size must be >= 1, got {self.batch_size}")
        if not (math.isfinite(self.confidence) and self.confidence >= 0):
            raise ArgumentError(f"confidence must be a z-value >= 0, got {self.confidence}")
        if not (math.isfinite(self.tolerance) and 0 <= self.tolerance < 1):
            raise ArgumentError(f"tolerance must be in [0, 1), got {self.tolerance}")
        if not (math.isfinite(self.max_compression) and self.max_compression >= 1):
            raise ArgumentError(f"max-compression must be >= 1, got {self.max_compression}")
        if not (math.isfinite(self.chain_slack) and 0 < self.chain_slack <= 1):
            raise ArgumentError(f"chain-slack must be in (0, 1], got {self.chain_slack}")
        if not (math.isfinite(self.scan_slack) and 0 < self.scan_slack <= 1):
            raise ArgumentError(f"scan-slack must be in (0, 1], got {self.scan_slack}")
        if not 1 <= self.teachers <= MAX_TEACHERS:
            raise ArgumentError(f"teachers must be between 1 and {MAX_TEACHERS}, got {self.teachers}")
        if self.max_trials < 1:
            raise ArgumentError(f"max-trials must be >= 1, got {self.max_trials}")
        if self.prune_scope not in SCOPES:
            raise ArgumentError(f"prune-scope must be one of {', '.join(SCOPES)}, got {self.prune_scope!r}")


class Silent:
    def phase(self, name: str, total: int | None = None) -> None:
        log.info("phase %s", name)

    def epoch(self, done: int, total: int, loss: float) -> None:
        pass

    def step(self, row: dict[str, Any]) -> None:
        log.info("step %s", row)

    def message(self, text: str) -> None:
        (log.warning if dist.is_main() else log.info)("%s", text)  # once per run, not once per rank


@dataclass
class RunState:
    phase: str = "start"  # start, grow, shift, prune, select, refit, done
    step: int = 0
    epochs: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_val: float = 0.0
    best_row: int = -1  # the history row of the network kept (the last one accepted)
    target: float = 0.0
    target_reached: bool = True
    chain: list[dict[str, Any]] = field(default_factory=list)  # the pruning chain's snapshots (file, digest)
    lo: int = 0  # selection: the chain index accepted (0: none smaller than the chain's start)
    cursor: int = 0  # selection: the chain index the scan judges next (it goes down from the end)
    scan: list[dict[str, Any]] = field(default_factory=list)  # judged chain indices, their rows and errors
    pending: int = 0  # selection: a chain index that passed, awaiting confirmation by the next one judged
    growth_stopped: str = ""
    rule: str = ""  # how steps are accepted, in words
    asked: float | None = None  # the target as asked (target may only fall below it with --no-fallback-dense)
    wall: float = 0.0
