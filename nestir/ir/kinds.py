"""The IR's op names as constants. Code outside the op definitions names an op through :class:`Op`
(``n.op == Op.CONV``), never a string literal: a misspelt name fails at import instead of never
matching, and every name here is a registered op definition (tests/test_architecture.py)."""


# the ops whose definitions say ``parametric`` (weights with a connectivity mask: linear, conv),
# filled by nestir.ir.opdefs.register; the graph reads it without importing the definitions
PARAMETRIC_OPS: set[str] = set()


class Op:
    """One constant per built-in op definition (:data:`nestir.ir.opdefs.OPS`). This module imports
    nothing, so every module of the core may use it."""

    ACT = "act"
    ADAPTIVE_POOL = "adaptive_pool"
    ATTENTION = "attention"
    BATCH_EXPAND = "batch_expand"
    BATCHNORM = "batchnorm"
    BINARY = "binary"
    CAT = "cat"
    CONST = "const"
    CONV = "conv"
    EINSUM = "einsum"
    EXPAND_AS = "expand_as"
    FLATTEN = "flatten"
    GATHER = "gather"
    GRN = "grn"
    GROUPNORM = "groupnorm"
    HEADS = "heads"
    IDENTITY = "identity"
    INDEX = "index"
    INPUT = "input"
    LAYERNORM = "layernorm"
    LINEAR = "linear"
    MATMUL = "matmul"
    MEAN = "mean"
    NORMALIZE = "normalize"
    OPAQUE = "opaque"
    OUTPUT = "output"
    PAD = "pad"
    PERMUTE = "permute"
    POOL = "pool"
    PREPEND = "prepend"
    RADIX_SOFTMAX = "radix_softmax"
    RESHAPE = "reshape"
    RESIZE = "resize"
    ROLL = "roll"
    SCALE = "scale"
    SCALE_CONST = "scale_const"
    SDPA = "sdpa"
    SLICE = "slice"
    SOFTMAX = "softmax"
    STACK = "stack"


class Fx:
    """torch.fx's node kinds (``fx.Node.op``), named once."""

    PLACEHOLDER = "placeholder"
    GET_ATTR = "get_attr"
    CALL_FUNCTION = "call_function"
    CALL_METHOD = "call_method"
    CALL_MODULE = "call_module"
    OUTPUT = "output"
