"""Device backends: execution and training of the IR, gradient statistics, lowering."""

from .device import default_device, resolve_device
from .executor import IRModule

__all__ = ["IRModule", "default_device", "resolve_device"]
