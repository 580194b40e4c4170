"""Resolving a model spec: a zoo name, ``path/to/file.py:factory`` or ``package.module:factory``."""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
import sys
from typing import Any

import torch.nn as nn

from nestir.driver.zoo import ZOO
from nestir.ir.errors import NestirError


def load_model(spec: str) -> tuple[nn.Module, tuple[int, ...] | None]:
    """The module a spec names, and its per-sample input shape when known (zoo models, or a
    model/module attribute ``input_shape`` / ``INPUT_SHAPE``)."""
    if spec in ZOO:
        e = ZOO[spec]
        return e.factory(), e.input_shape
    if ":" not in spec:
        raise NestirError(f"unknown model '{spec}': use a zoo name ({', '.join(ZOO)}), "
                          "path/to/file.py:factory or package.module:factory")
    model, module = load_object(spec)
    if not isinstance(model, nn.Module):
        raise NestirError(f"'{spec}' gave a {type(model).__name__}, not a torch.nn.Module")
    shape: Any = getattr(model, "input_shape", None) or getattr(module, "INPUT_SHAPE", None)
    return model, tuple(shape) if shape else None


def load_object(spec: str, what: str = "model") -> tuple[Any, Any]:
    """What ``path/to/file.py:factory`` or ``package.module:factory`` names, called when it is a
    callable that is not a module: (the object, the Python module it came from)."""
    where, _, attr = spec.rpartition(":")
    if where.endswith(".py") or os.sep in where:
        if not os.path.isfile(where):
            raise NestirError(f"{what} file '{where}' does not exist")
        mod_name = f"nestir_user_{abs(hash(os.path.abspath(where)))}"
        loader_spec = importlib.util.spec_from_file_location(mod_name, where)
        if loader_spec is None or loader_spec.loader is None:
            raise NestirError(f"cannot import '{where}' as a Python file")
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[mod_name] = module
        try:
            loader_spec.loader.exec_module(module)
        except Exception as e:
            raise NestirError(f"importing '{where}' failed: {type(e).__name__}: {e}") from None
    else:
        try:
            module = importlib.import_module(where)
        except Exception as e:
            raise NestirError(f"cannot import module '{where}': {type(e).__name__}: {e}") from None
    factory = getattr(module, attr, None)
    if factory is None:
        raise NestirError(f"'{where}' has no attribute '{attr}'")
    try:
        obj = factory() if callable(factory) and not isinstance(factory, nn.Module) else factory
    except Exception as e:
        raise NestirError(f"factory '{attr}' in '{where}' raised {type(e).__name__}: {e}") from None
    return obj, module


BUILTIN_DATA = ("mnist5k", "digits", "mnist-idx:", "npz:")


def is_data_factory(spec: str) -> bool:
    """``--data`` names a loader factory (``file.py:factory`` / ``module:factory``), not a built-in set."""
    return ":" in spec and not spec.startswith(BUILTIN_DATA)


def load_loaders(spec: str) -> tuple[Any, Any, Any]:
    """``(train, val, test)`` from a loader factory: it returns ``(train, val)`` or
    ``(train, val, test)`` iterables of ``(inputs, targets)`` batches (DataLoaders); test may be None."""
    obj, _ = load_object(spec, "data")
    if isinstance(obj, dict):
        obj = (obj.get("train"), obj.get("val"), obj.get("test"))
    if not isinstance(obj, (tuple, list)) or len(obj) not in (2, 3) or obj[0] is None or obj[1] is None:
        raise NestirError(f"--data {spec}: the factory must return (train, val) or (train, val, test) loaders, "
                          f"got {type(obj).__name__}")
    return obj[0], obj[1], obj[2] if len(obj) == 3 else None


MAX_INPUT_ELEMENTS = 50_000_000  # per sample: a 4K RGB image is 25M


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(s) for s in text.replace("x", ",").split(",") if s.strip())
    except ValueError:
        raise NestirError(f"--input-shape {text!r}: expected integers like 1,28,28") from None
    if not dims or any(d <= 0 for d in dims):
        raise NestirError(f"--input-shape {text!r}: expected positive integers like 1,28,28")
    if math.prod(dims) > MAX_INPUT_ELEMENTS:
        raise NestirError(f"--input-shape {text!r}: {math.prod(dims):,} values per sample is more than nestir "
                          f"traces ({MAX_INPUT_ELEMENTS:,}); check the shape")
    return dims
