"""The frontend: a module traced with torch.fx (``tracer``) and built into the IR by a walker
(``builder``) whose handlers live by job: values and batch sizes (``values``, ``batch``),
shape and elementwise functions (``shapes``), attention patterns (``attention``), and the
end-of-build rewrites (``rewrites``). ``measure``: ``nestir.stats`` of a module."""

from nestir.frontend.tracer import trace
from nestir.ir.checks import opaque_nodes

__all__ = ["opaque_nodes", "trace"]
