"""The ``nestir`` command line (``main``), its training verbs in ``run``."""

from nestir.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
