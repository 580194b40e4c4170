"""``nestir.testing``: property-test your own passes with nestir's own kit.

Hypothesis strategies that draw random small traceable models, and a checker that runs a pass on
a copy of a graph and asserts the contract the pass declares (``effect``, ``preserves_function``,
``needs_data``), that the result verifies, that the pass is deterministic, and that the graph
still lowers to torch and ONNX with the IR executor's outputs::

    from hypothesis import given
    from nestir.testing import check_pass, graphs

    @given(graphs())
    def test_my_pass(g):
        check_pass(MyPass(), g)

Strategies: :func:`models` (``(module, example_batch)``), :func:`graphs` (traced, optionally
with dormant connections), :func:`mlp_specs` / :func:`cnn_specs` (the specs behind them).
Helpers: :func:`batch_for` (inputs and labels that fit a graph), :func:`sparsify`,
:func:`run_ir` / :func:`run_torch` / :func:`run_onnx` (a graph's outputs three ways).
Needs ``hypothesis`` (a dependency of nestir)."""

from nestir.testing.check import PassContractError, check_pass, onnx_available, run_ir, run_onnx, run_torch
from nestir.testing.strategies import (
    MLP,
    SpecModel,
    batch_for,
    cnn_specs,
    graphs,
    mlp_specs,
    models,
    randomize,
    sparsify,
)

__all__ = [
    "MLP", "PassContractError", "SpecModel", "batch_for", "check_pass", "cnn_specs", "graphs", "mlp_specs", "models",
    "onnx_available", "randomize", "run_ir", "run_onnx", "run_torch", "sparsify",
]
