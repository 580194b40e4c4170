"""The registered passes, one per module; ``get(name, **options)`` returns one configured."""

from nestir.passinfra import Pass, PassContext, PassManager, PassResult, get, parse, registered

from . import eliminate_dead_neurons, shift_activation  # noqa: F401  (registration)

__all__ = ["Pass", "PassContext", "PassManager", "PassResult", "get", "parse", "registered"]
