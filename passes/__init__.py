"""The registered passes, one per module; ``get(name, **options)`` returns one configured."""

from nestir.passinfra import Pass, PassContext, PassManager, PassResult, get, parse, register, registered

from . import (  # noqa: F401  (registration)
    add_feature_map,
    bridge_neuron,
    eliminate_dead_neurons,
    grow_connection,
    magnitude_prune,
    partial_area_mask,
    shift_activation,
    split_neuron,
)

__all__ = ["Pass", "PassContext", "PassManager", "PassResult", "get", "parse", "register", "registered"]
