"""The frontend: torch.fx tracing of a module into the IR (``tracer``)."""

from nestir.frontend.tracer import trace
from nestir.ir.checks import opaque_nodes

__all__ = ["opaque_nodes", "trace"]
