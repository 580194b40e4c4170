"""The pass infrastructure: the pass base class, options, the registry, the manager that holds
every pass to its contract (``contracts``). The passes themselves live in ``nestir.passes``."""

from nestir.passinfra.base import (
    Pass,
    PassContext,
    PassManager,
    PassResult,
    get,
    parse,
    register,
    registered,
    resolve,
)

__all__ = ["Pass", "PassContext", "PassManager", "PassResult", "get", "parse", "register", "registered", "resolve"]
