"""The registered passes, one per module; ``get(name, **options)`` returns one configured. Importing
this package registers the built-in passes: name lookups (``get``, ``parse``, ``resolve``) go
through it, so the pass infrastructure below never imports the passes built on it."""

from nestir.passes import (  # noqa: F401  (registration)
    add_feature_map,
    bridge_neuron,
    eliminate_dead_neurons,
    grow_connection,
    magnitude_prune,
    partial_area_mask,
    shift_activation,
    split_neuron,
)
from nestir.passinfra.base import Pass, PassContext, PassManager, PassResult, get, parse, register, registered, resolve

__all__ = ["Pass", "PassContext", "PassManager", "PassResult", "get", "parse", "register", "registered", "resolve"]
