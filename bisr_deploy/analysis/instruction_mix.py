"""Instruction mix of the bitserial BiSR-Conv kernels: popcounts per output from the lowered TIR, and the
static instruction counts of the compiled kernel from its disassembly (aarch64 NEON and x86).

Two views of one kernel (``bisr_deploy/compile/bitserial.py``):

- ``tir_popcounts``: the kernel lowered by TVM's default TIR pipeline (what ``tvm.tirx.build`` hands to
  LLVM: buffers flattened, loops vectorised and unrolled), walked node by node. Every ``popcount`` call is
  counted ``lanes × Π(extents of its enclosing loops)`` times: exact dynamic counts, in 32-bit words, as long
  as no popcount sits under a branch or a loop of non-constant extent (``BisrError`` otherwise).
- ``instruction_mix``: ``objdump -d`` of the compiled object, the kernel's body (``kernel_body``), counted by
  instruction class (``ARM_CLASSES`` / ``X86_CLASSES``). Static counts: each instruction
  once, however often it runs.
"""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ..compile.bitserial import WORD_BITS, BiSRConvSpec, bisrconv_primfunc
from ..compile.schedule import Schedule
from ..compile.tir_walk import children
from ..errors import BisrError

KERNEL_SYMBOL = "bisrconv"  # global symbol of bisrconv_primfunc


@dataclass(frozen=True)
class KernelShape:
    """One distinct BiSR-Conv kernel of a network: ``spec`` at its largest resolution, how many BiSR-Convs
    of the network use it (``layers``) and at which resolutions (``sizes``, (H, W) pairs)."""

    spec: BiSRConvSpec
    layers: int
    sizes: tuple[tuple[int, int], ...]

    @property
    def name(self) -> str:
        kh, kw = self.spec.kernel
        grouped = f" g{self.spec.group} ({self.spec.group_channels} ch/group)" if self.spec.group > 1 else ""
        return f"{kh}x{kw} {self.spec.channels}ch{grouped}"


def model_kernel_shapes(model=None, height: int = 64, width: int = 64) -> list[KernelShape]:
    """The distinct BiSR-Conv kernels of ``model`` (default: ``BiSRNet()``) for a height x width scene, from
    its ``bisr_convs()`` and one forward pass (the resolution of each): one entry per (channels, kernel,
    pads, groups), ordered by kernel, groups, channels."""
    import torch

    from ..model import BiSRNet

    if height < 1 or width < 1:
        raise BisrError(f"scene size must be positive, got {height} x {width}")
    model = BiSRNet() if model is None else model
    convs = model.bisr_convs()
    inputs = {}
    hooks = [conv.register_forward_hook(lambda m, args, out, name=name: inputs.__setitem__(name, args[0].shape))
             for name, conv in convs.items()]
    training = model.training
    try:
        bands = torch.zeros(1, model.n_bands, height, width)
        with torch.no_grad():
            model.eval()(bands, bands if model.mode == "sim" else None)
    finally:
        model.train(training)
        for hook in hooks:
            hook.remove()
    found: dict[tuple, list[BiSRConvSpec]] = {}
    for name, conv in convs.items():
        layer = conv.binary_conv
        (ph, pw), (kh, kw) = layer.padding, layer.kernel_size
        n, c, h, w = inputs[name]
        spec = BiSRConvSpec(n, c, h, w, (kh, kw), (ph, pw, ph, pw), layer.groups)
        found.setdefault((c, (kh, kw), spec.pads, layer.groups), []).append(spec)
    shapes = []
    for (c, kernel, _, group), specs in sorted(found.items(), key=lambda kv: (kv[0][1], kv[0][3] > 1, kv[0][0])):
        largest = max(specs, key=lambda s: (s.height * s.width, s.height))
        sizes = tuple(sorted({(s.height, s.width) for s in specs}, reverse=True))
        shapes.append(KernelShape(largest, len(specs), sizes))
    return shapes


def ideal_words(spec: BiSRConvSpec, word_bits: int = WORD_BITS) -> int:
    """Fewest ``word_bits``-bit popcounts per output: ceil(Cg·KH·KW / word_bits)."""
    kh, kw = spec.kernel
    return -(-spec.group_channels * kh * kw // word_bits)


def lower(func, tvm_target: dict):
    """``func`` after TVM's default TIR pipeline for ``tvm_target`` (as ``tvm.tirx.build`` lowers it)."""
    import tvm

    target = tvm.target.Target(tvm_target)
    mod = tvm.tirx.transform.BindTarget(target.with_host(target))(tvm.IRModule({KERNEL_SYMBOL: func}))
    pipeline, _, _ = tvm.tirx.get_default_tir_pipeline(target)
    return pipeline(mod)[KERNEL_SYMBOL]


def tir_popcounts(func) -> Counter:
    """Dynamic popcounts of a lowered PrimFunc: {dtype of the popcount (``"uint32x4"``: 4 lanes of 32 bits):
    how many times it runs}. A popcount repeated in one store's value (the epilogue uses its sum in several
    places) counts once, as LLVM computes a repeated pure expression once. Raises ``BisrError`` if a popcount
    sits under a conditional or a loop whose extent is not a constant (its count would not be exact)."""
    from tvm import tirx
    from tvm.ir.expr import Call
    from tvm_ffi import structural_equal

    counts = Counter()

    def visit(node, trips: int, exact: bool, seen: list):
        if isinstance(node, tirx.BufferStore):
            seen = []  # the popcounts of this store's value counted so far
        if isinstance(node, tirx.For):
            constant = isinstance(node.extent, tirx.IntImm)  # min and extent hold no popcount
            visit(node.body, trips * int(node.extent) if constant else trips, exact and constant, seen)
            return
        op = getattr(node.op, "name", None) if isinstance(node, Call) else None
        if isinstance(node, (tirx.IfThenElse, tirx.While)) or op == "prim.if_then_else":
            for child in children(node):
                visit(child, trips, False, seen)
            return
        if isinstance(node, tirx.Select):  # both arms are evaluated
            for child in children(node):
                visit(child, trips, exact, seen)
            return
        if op == "tirx.popcount":
            if not exact:
                raise BisrError("a popcount under a branch or a loop of unknown extent: its count is not exact")
            if any(structural_equal(node, other) for other in seen):
                return
            seen.append(node)
            counts[str(node.ty.dtype)] += trips
        for child in children(node):
            visit(child, trips, exact, seen)

    visit(func.body, 1, True, [])
    return counts


def popcounts_per_output(spec: BiSRConvSpec, tvm_target: dict, lanes: int) -> dict:
    """(a) of the instruction mix: the ``lanes``-scheduled kernel for ``tvm_target``, lowered and walked.
    Returns ``{"word_bits", "vector_lanes"}`` of its popcount as lowered, ``"words_per_output"`` and
    ``"vector_ops_per_output"`` (popcounts per output element) and ``"ideal_words"``."""
    import tvm_ffi

    counts = tir_popcounts(lower(bisrconv_primfunc(spec, Schedule(lanes=lanes)), tvm_target))
    if len(counts) != 1:
        raise BisrError(f"expected one popcount type in the kernel, found {dict(counts)}")
    (dtype, ops), = counts.items()
    dtype = tvm_ffi.dtype(dtype)
    per_output = ops / (spec.batch * spec.channels * spec.height * spec.width)
    return {"word_bits": dtype.bits, "words_per_output": per_output * dtype.lanes, "vector_lanes": dtype.lanes,
            "vector_ops_per_output": per_output, "ideal_words": ideal_words(spec)}


def compile_object(spec: BiSRConvSpec, tvm_target: dict, lanes: int, path: str | Path) -> Path:
    """Compile the kernel for ``tvm_target`` into the object file ``path`` (no linker needed)."""
    import tvm

    try:
        module = tvm.tirx.build(bisrconv_primfunc(spec, Schedule(lanes=lanes)), target=tvm.target.Target(tvm_target))
    except Exception as exc:  # noqa: BLE001 - TVM raises many kinds; one line for the user
        raise BisrError(f"TVM build failed: {exc.__class__.__name__}: {str(exc).splitlines()[0]}") from exc
    module.write_to_file(str(path))
    return Path(path)


_COMMENT = re.compile(r"\s+(#|//)\s.*$")  # objdump's trailing comment (x86 "# addr <sym>", aarch64 "// #imm")
_X86_PREFIXES = {"lock", "rep", "repz", "repe", "repnz", "repne", "notrack", "bnd", "data16", "cs", "ds"}


def disassemble(path: str | Path, objdump: str) -> dict[str, list[tuple[str, str]]]:
    """``objdump -d`` of ``path`` -> {function symbol: [(mnemonic, operands), ...]} in address order."""
    proc = subprocess.run([objdump, "-d", "--no-show-raw-insn", str(path)], capture_output=True, text=True)
    if proc.returncode:
        raise BisrError(f"{objdump} -d {path} failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr else ''}")
    functions, current = {}, None
    for line in proc.stdout.splitlines():
        if line.endswith(">:") and " <" in line:
            current = functions.setdefault(line.split(" <", 1)[1][:-2], [])
        elif current is not None and ":\t" in line:
            parts = line.split(":\t", 1)[1].split(None, 1)
            while len(parts) == 2 and parts[0] in _X86_PREFIXES:
                parts = parts[1].split(None, 1)
            if parts and parts[0] != "(bad)":
                current.append((parts[0], _COMMENT.sub("", parts[1]).strip() if len(parts) == 2 else ""))
    return functions


def kernel_body(functions: dict, symbol: str) -> list[tuple[str, str]]:
    """The instructions of ``symbol`` and ``<symbol>_compute_*``: the kernel body TVM emits (its parallel
    regions have no symbols of their own and lie inside it); the ``__tvm_ffi_<symbol>`` argument checks are
    left out."""
    body = [ins for name, code in functions.items()
            if name == symbol or name.startswith(symbol + "_compute_") for ins in code]
    if not body:
        raise BisrError(f"no function {symbol}* in the disassembly")
    return body


# ---- instruction classes. ARM classes are disjoint; on x86 "load"/"store" go by memory operand, so a load-op
# instruction (e.g. vmulps (%rax),...) is also in its own class. "total" counts every instruction. ----

# XOR classes leave out the zeroing idiom (all operands the same register).
ARM_CLASSES = {  # aarch64 (NEON) mnemonic, operands -> class
    "popcount (cnt)": lambda m, ops: m == "cnt",
    "pairwise add (uaddlp/uadalp/addv/addp)": lambda m, ops: m in ("uaddlp", "uadalp", "saddlp", "sadalp", "addv",
                                                                    "uaddlv", "saddlv", "addp"),
    "xor (eor)": lambda m, ops: m in ("eor", "eor3") and not _zeroing(ops),
    "and/bic": lambda m, ops: m in ("and", "ands", "bic"),
    "load": lambda m, ops: m.startswith("ld"),
    "store": lambda m, ops: m.startswith("st"),
    "float (f*, scvtf, ucvtf)": lambda m, ops: m.startswith("f") or m in ("scvtf", "ucvtf"),
}
_X86_FLOAT = re.compile(r"^v?(add|sub|mul|div|f(n)?m(add|sub)\w*|cmp\w*|max|min|sqrt|blendv?)(ps|pd|ss|sd)$"
                        r"|^v?cvt\w*(ps|pd|ss|sd)\w*$")
_X86_XOR = ("xor", "pxor", "vpxor", "vpxord", "vpxorq", "xorps", "xorpd", "vxorps", "vxorpd")
_X86_AND = ("and", "andn", "pand", "vpand", "vpandd", "vpandq", "vpandn", "vpandnd", "vpandnq", "andps", "andpd",
            "vandps", "vandpd", "vandnps", "vandnpd")


def _operands(ops: str) -> list[str]:
    """Split an operand list at the commas outside parentheses (x86 memory operands hold commas)."""
    depth, operands, start = 0, [], 0
    for i, ch in enumerate(ops):
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            operands.append(ops[start:i].strip())
            start = i + 1
    operands.append(ops[start:].strip())
    return operands


def _zeroing(ops: str) -> bool:
    """The zeroing idiom ``xor r, r`` / ``vpxor x, x, x`` / ``eor v.16b, v.16b, v.16b``: no XOR is computed."""
    operands = _operands(ops)
    return len(operands) > 1 and len(set(operands)) == 1


def _x86_memory(m: str, ops: str) -> str | None:
    """"load", "store" or None for an AT&T-syntax instruction (the destination is the last operand)."""
    if "(" not in ops or m.startswith(("lea", "nop", "prefetch")):
        return None
    operands = _operands(ops)
    reads_only = m.startswith(("cmp", "test", "ucomi", "comi", "vucomi", "vcomi", "bt", "push", "call", "jmp"))
    return "store" if "(" in operands[-1] and len(operands) > 1 and not reads_only else "load"


X86_CLASSES = {  # x86 (AT&T syntax) mnemonic, operands -> class. LLVM often does integer XOR/AND in the
    # float domain (vxorps, vandps) and negates floats by XOR with the sign bit: both land in the bitwise classes.
    "popcount (vpopcntd/q, popcnt)": lambda m, ops: m in ("popcnt", "vpopcntd", "vpopcntq", "vpopcntb", "vpopcntw"),
    "nibble-LUT popcount (vpshufb, vpsadbw)": lambda m, ops: m in ("vpshufb", "pshufb", "vpsadbw", "psadbw"),
    "xor (vpxor*, vxorps, xor)": lambda m, ops: m in _X86_XOR and not _zeroing(ops),
    "ternary logic (vpternlog)": lambda m, ops: m.startswith("vpternlog"),
    "and/andn (vpand*, vandps, and)": lambda m, ops: m in _X86_AND,
    "load": lambda m, ops: _x86_memory(m, ops) == "load",
    "store": lambda m, ops: _x86_memory(m, ops) == "store",
    "float (v*ps/pd/ss/sd arithmetic, compares, converts)": lambda m, ops: bool(_X86_FLOAT.match(m)),
}


def instruction_mix(instructions: list[tuple[str, str]], classes: dict) -> dict[str, int]:
    """Count ``instructions`` ((mnemonic, operands) pairs) by ``classes``; adds ``"total"``."""
    mix = {name: sum(1 for m, ops in instructions if test(m, ops)) for name, test in classes.items()}
    mix["total"] = len(instructions)
    return mix


def objdump_for(arch: str) -> str:
    """The host ``objdump`` that reads code for ``arch`` (a ``CompileTarget.arch``): the aarch64 cross one for
    the ARM targets, the host's for x86. ``BisrError`` naming the Debian package when it is missing."""
    from .. import cross

    return cross.linux_tool("objdump") if _is_aarch64(arch) else cross.require_tool("objdump")


def classes_for(arch: str) -> dict:
    """``ARM_CLASSES`` or ``X86_CLASSES`` for a ``CompileTarget.arch``."""
    return ARM_CLASSES if _is_aarch64(arch) else X86_CLASSES


def _is_aarch64(arch: str) -> bool:
    from ..compile.targets import TARGETS
    from ..hostcpu import triple_arch

    return triple_arch(TARGETS[arch].triple) == "aarch64"


def analyse_kernel(spec: BiSRConvSpec, target, workdir: str | Path) -> dict:
    """Both views of the kernel ``spec`` scheduled and compiled for ``target`` (a ``CompileTarget``):
    ``{"tir": popcounts_per_output(...), "mix": {class: static count, ..., "total": n}}``. The object file
    is written into ``workdir``."""
    objdump = objdump_for(target.arch)  # before the compile: a missing tool is one clear error
    obj = compile_object(spec, target.tvm_target, target.lanes, Path(workdir) / "kernel.o")
    body = kernel_body(disassemble(obj, objdump), KERNEL_SYMBOL)
    return {"tir": popcounts_per_output(spec, target.tvm_target, target.lanes),
            "mix": instruction_mix(body, classes_for(target.arch))}
