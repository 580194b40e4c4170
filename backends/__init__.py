"""Device backends: execution and training of the IR, gradient statistics, lowering."""

from nestir.backends.device import default_device, resolve_device
from nestir.ir.interpreter import IRModule

__all__ = ["IRModule", "default_device", "resolve_device"]
