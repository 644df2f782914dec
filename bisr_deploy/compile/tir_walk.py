"""Walking TIR: this TVM exposes no Python statement or expression visitor, so the compiler's TIR rewrites
(``neon.py``) and analyses (``estimate/loops.py``, ``analysis/instruction_mix.py``) walk nodes by their
reflected fields."""

from __future__ import annotations


def children(node):
    """The TIR statements and expressions directly below ``node`` (from its reflected fields)."""
    import tvm_ffi
    from tvm import tirx
    from tvm.ir.expr import Expr

    info = type(node).__tvm_ffi_type_info__
    while info is not None:
        for field in info.fields:
            value = getattr(node, field.name)
            for item in (value if isinstance(value, tvm_ffi.Array) else (value,)):
                if isinstance(item, (tirx.Stmt, Expr)):
                    yield item
        info = info.parent_type_info
