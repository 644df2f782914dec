"""Cycles of every compiled kernel from a static throughput model of its machine loops.

Three steps, each exact about what it knows:

1. ``tir_loops``: the kernels' TIR after TVM's default lowering (what the code generator turns into LLVM IR),
   walked loop by loop: every ``For`` with its **trip count** (the product of its extent and those of the
   loops around it: the times its body runs in one call, all threads together) and whether it runs in a
   parallel region.
2. ``assemble``: the same lowered kernels through TVM's LLVM code generator (the artifact's target, so the
   same optimised IR that became ``model.so``), then ``llc`` (LLVM 19) to assembly that keeps the IR's block
   names. TVM names the blocks of a TIR loop ``for_body_<loop variable>``, which ties every machine loop
   to its TIR loop (``machine_loops``).
3. ``mca_cycles``: ``llvm-mca`` (LLVM 19's scheduling model of the chosen core) simulates each machine
   loop's own instructions (those not in a nested loop) for 100 iterations: cycles per iteration, divided
   by the loop's ``unroll_factor`` (LLVM's own unrolling), times the TIR trip count of the loop it runs
   (``tir_loop_of``); copies of one TIR loop (unswitched, or inside an unrolled outer loop) are averaged.
   Every loop is renamed apart before lowering (``with_unique_loop_names``); the copies TVM makes of the
   loops inside an unrolled loop still share a name and are told apart by ``loop_instance``.

Limits, stated in docs/estimate.md: every instruction of a loop body is counted on every iteration (both
arms of a branch), loads hit L1 (memory traffic is a separate bound, ``network.dram_traffic``), loops that
LLVM's vectoriser makes (``vector.body``) and the remainders of its unrolling are not counted.
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import BisrError

LLVM_BIN = Path("/usr/lib/llvm-19/bin")  # Debian's llvm-19 (.ci/setup-arm.sh installs it)
MCA_ITERATIONS = 100


def llvm_tool(name: str) -> str:
    """Path of LLVM 19's ``name`` (llc, llvm-mca); ``BisrError`` naming the Debian package when missing."""
    path = LLVM_BIN / name
    if not path.is_file():
        raise BisrError(f"{path} not found: install the Debian package llvm-19 (apt-get install llvm-19)")
    return str(path)


@dataclass(frozen=True)
class TirLoop:
    """One ``For`` of a lowered kernel: loop variable name, trips per call, inside a parallel loop or not,
    the loop variable of the ``For`` around it (None at the top)."""

    name: str
    trips: int
    parallel: bool
    parent: str | None


def lower_module(tir_mod, tvm_target: dict):
    """``tir_mod`` after TVM's default TIR pipeline for ``tvm_target`` (what ``tvm.tirx.build`` lowers to)."""
    import tvm

    target = tvm.target.Target(tvm_target)
    mod = tvm.tirx.transform.BindTarget(target.with_host(target))(tir_mod)
    pipeline, _, _ = tvm.tirx.get_default_tir_pipeline(target)
    return pipeline(mod)


def tir_loops(func) -> list[TirLoop]:
    """The ``For`` loops of a lowered PrimFunc in program order. ``BisrError`` for a loop of unknown extent."""
    from tvm import tirx

    from ..compile.tir_walk import children

    loops: list[TirLoop] = []

    def visit(node, trips: int, parallel: bool, parent: str | None):
        if isinstance(node, tirx.For):
            if not isinstance(node.extent, tirx.IntImm):
                raise BisrError(f"loop {node.loop_var.name} has no constant extent: its trip count is unknown")
            trips *= int(node.extent)
            parallel = parallel or node.kind == tirx.ForKind.PARALLEL
            loops.append(TirLoop(node.loop_var.name, trips, parallel, parent))
            parent = node.loop_var.name
        for child in children(node):
            visit(child, trips, parallel, parent)

    visit(func.body, 1, False, None)
    return loops


# TVM's LLVM 22 IR -> what LLVM 19's parser reads (attributes added after 19; none changes the code).
_IR_FIXES = ((re.compile(r"captures\(none\)"), "nocapture"), (re.compile(r"captures\([a-z_, ]*\)"), ""),
             (re.compile(r"\bsamesign "), ""), (re.compile(r", target_mem\d: \w+"), ""),
             (re.compile(r" nocreateundeforpoison\b"), ""),
             (re.compile(r"^declare .*@llvm\.masked\..*$", re.M), ""),  # re-declared by the parser, 19's way
             # LLVM 19's AArch64 combine of a shuffle of two `tbl2` results into one `tbl4` reads the lookups'
             # index vectors as constants, which NEON's table lookups (neon.py: their planes zipped) are not:
             # it reads past them and crashes, now and then or always (later LLVMs check). A `freeze` of each
             # `tbl2` result (no instruction) keeps the combine off; %N stays the name its users read.
             (re.compile(r"^(\s*)%([\w.]+) = (tail call <16 x i8> @llvm\.aarch64\.neon\.tbl2\.v16i8\(.*)$", re.M),
              r"\1%tbl2.\2 = \3\n\1%\2 = freeze <16 x i8> %tbl2.\2"))
# LLVM 20+ gives masked loads/stores/gathers their alignment as a pointer attribute, 19 as an i32 operand.
_MASKED_CALL = re.compile(r"^.*call .*@llvm\.masked\.(load|store|gather|scatter|expandload|compressstore).*$", re.M)
_ALIGNED_POINTER = re.compile(r"((?:<\d+ x )?ptr>?) align (\d+) (%[\w.]+|null)")


def llvm19_ir(ir: str) -> str:
    """``ir`` (TVM's LLVM) rewritten into the syntax LLVM 19 reads (and around one of its bugs, below); same
    instructions."""
    for pattern, replacement in _IR_FIXES:
        ir = pattern.sub(replacement, ir)
    return _MASKED_CALL.sub(lambda m: _ALIGNED_POINTER.sub(r"\1 \3, i32 \2", m.group(0), count=1), ir)


def assemble(tir_mod, tvm_target: dict, workdir: Path) -> str:
    """Assembly (LLVM 19 ``llc -O3``, IR block names in comments) of the kernels of ``tir_mod`` as TVM
    builds them for ``tvm_target`` (its default TIR pipeline, the one ``lower_module`` runs)."""
    import tvm

    try:
        ir = tvm.tirx.build(tir_mod, target=tvm.target.Target(tvm_target)).inspect_source("ll")
    except Exception as exc:  # noqa: BLE001 - TVM raises many kinds; one line for the user
        raise BisrError(f"TVM code generation failed: {exc.__class__.__name__}: {str(exc).splitlines()[0]}") from exc
    (workdir / "kernels.ll").write_text(llvm19_ir(ir))
    args = [llvm_tool("llc"), "-O3", f"-mtriple={tvm_target['mtriple']}", str(workdir / "kernels.ll"),
            "-o", str(workdir / "kernels.s")]
    if tvm_target.get("mcpu"):
        args.append(f"-mcpu={tvm_target['mcpu']}")
    if tvm_target.get("mattr"):
        args.append(f"-mattr={','.join(tvm_target['mattr'])}")
    proc = subprocess.run(args, capture_output=True, text=True)
    if proc.returncode:
        raise BisrError(f"llc failed on the kernels' IR: {(proc.stderr.strip().splitlines() or ['?'])[0]}")
    return (workdir / "kernels.s").read_text()


@dataclass
class MachineLoop:
    """A loop of the assembly: its IR header block, its own instructions (nested loops' left out)."""

    function: str  # the assembly function (kernel or its ``_compute_`` parallel closure)
    blocks: list[str]  # IR names of the blocks of its own instructions, in order
    instructions: list[str]


_FUNCTION = re.compile(r"^([A-Za-z_][\w.$]*):\s*(?://|#|;) @")
_LABEL = re.compile(r"^(\.L\w+):\s*(?:(?://|#) %(\S+))?")
_FALLTHROUGH = re.compile(r"^(?://|#) %bb\.\d+:\s*(?://|#) %(\S+)")
_COMMENT = re.compile(r"\s*(//.*|#\s.*)$")  # aarch64 "// ...", x86 "# ..." (not "#imm")


def machine_loops(asm: str) -> list[MachineLoop]:
    """Every loop of ``asm`` (a backward branch to a label of the same function), with its own instructions."""
    loops: list[MachineLoop] = []
    function, block = None, "entry"
    code: list[tuple[str, str]] = []  # (block, instruction) of the current function
    labels: dict[str, int] = {}

    def finish():
        if function is not None:
            loops.extend(_function_loops(function, code, labels))

    for line in asm.splitlines():
        if (m := _FUNCTION.match(line)) is not None:
            finish()
            function, block, code, labels = m.group(1), "entry", [], {}
        elif function is None:
            continue
        elif (m := _LABEL.match(line)) is not None:
            labels[m.group(1)] = len(code)
            block = m.group(2) or block
        elif (m := _FALLTHROUGH.match(line)) is not None:
            block = m.group(1)
        elif line.startswith("\t") and not line.startswith("\t."):
            text = _COMMENT.sub("", line).strip()
            if text:
                code.append((block, text))
    finish()
    return loops


def _branch_target(instruction: str) -> str | None:
    """The local label a branch instruction jumps to (aarch64 b/b.cc/cbz/tbz, x86 j*), else None."""
    mnemonic, _, operands = instruction.replace("\t", " ").partition(" ")
    if not (mnemonic in ("b", "cbz", "cbnz", "tbz", "tbnz", "jmp") or mnemonic.startswith(("b.", "j"))):
        return None
    target = operands.split(",")[-1].strip()
    return target if target.startswith(".L") else None


def _function_loops(function: str, code, labels) -> list[MachineLoop]:
    ranges: dict[int, int] = {}
    for index, (_, instruction) in enumerate(code):
        target = _branch_target(instruction)
        if target in labels and labels[target] <= index:
            start = labels[target]
            ranges[start] = max(ranges.get(start, index), index)
    spans = sorted(ranges.items())
    loops = []
    for start, end in spans:
        nested = [(s, e) for s, e in spans if start < s and e <= end]
        own = [i for i in range(start, end + 1) if not any(s <= i <= e for s, e in nested)]
        blocks = list(dict.fromkeys(code[i][0] for i in own))
        loops.append(MachineLoop(function, blocks, [code[i][1] for i in own]))
    return loops


def mca_cycles(loops: list[MachineLoop], mcpu: str, triple: str, workdir: Path) -> list[float]:
    """Cycles per iteration of each loop's own instructions on ``mcpu`` (``llvm-mca``, one run for all)."""
    if not loops:
        return []
    source = workdir / "loops.s"
    with open(source, "w") as fh:
        for k, loop in enumerate(loops):
            fh.write(f"# LLVM-MCA-BEGIN loop{k}\n" + "".join(f"\t{ins}\n" for ins in loop.instructions)
                     + "# LLVM-MCA-END\n")
    proc = subprocess.run([llvm_tool("llvm-mca"), f"-mtriple={triple}", f"-mcpu={mcpu}",
                           f"-iterations={MCA_ITERATIONS}", "-json", "-skip-unsupported-instructions=lack-sched",
                           str(source)], capture_output=True, text=True)
    if proc.returncode:
        raise BisrError(f"llvm-mca failed: {(proc.stderr.strip().splitlines() or ['?'])[0]}")
    cycles = {region["Name"]: region["SummaryView"]["TotalCycles"] / region["SummaryView"]["Iterations"]
              for region in json.loads(proc.stdout)["CodeRegions"] if region.get("Name")}
    return [cycles.get(f"loop{k}", 0.0) for k in range(len(loops))]


_LOOP_BLOCK = re.compile(r"^for_(body|begin|end)_(.+)$")


def _tir_var(name: str, loops: dict[str, TirLoop]) -> str | None:
    """The TIR loop variable named by an IR block's ``<var>[LLVM's uniquifying digits][.LLVM suffixes]``."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        var = ".".join(parts[:cut])
        if var in loops:
            return var
        candidates = [n for n in loops if var.startswith(n) and var[len(n):].isdigit()]
        if candidates:
            return max(candidates, key=len)
    return None


_UNROLLED_COPY = re.compile(r"^(.*)\.(\d+)$")


def unroll_factor(loop: MachineLoop) -> int:
    """How many iterations of its TIR loop one iteration of ``loop`` runs: LLVM names the blocks of the
    copies of an unrolled body ``<block>.1`` ... ``<block>.(u-1)``; u = the most copies of one block."""
    copies: dict[str, set[int]] = {}
    for block in loop.blocks:
        m = _UNROLLED_COPY.match(block)
        base, copy = (m.group(1), int(m.group(2))) if m else (block, 0)
        copies.setdefault(base, set()).add(copy)
    return max(len(found) for found in copies.values())


def tir_loop_of(loop: MachineLoop, loops: dict[str, TirLoop]) -> str | None:
    """The TIR loop a machine loop runs: the loop whose ``for_body`` block holds its own instructions; else
    the innermost loop whose ``for_begin``/``for_end`` blocks or peeled iterations (``for_body_X.peel*``: X
    was unrolled into the loop around it) it holds. None: a loop no TIR loop names (error and cleanup
    paths), and the remainder loops of LLVM's runtime unrolling (``.prol``, ``.epil``: fewer iterations
    than the unroll factor per entry, left out)."""
    bodies, around = [], []
    for block in loop.blocks:
        m = _LOOP_BLOCK.match(block)
        var = _tir_var(m.group(2), loops) if m else None
        if var is None:
            continue
        suffix = m.group(2)[len(var):]
        if ".prol" in suffix or ".epil" in suffix:
            return None
        if m.group(1) == "body" and ".peel" not in suffix:
            bodies.append(var)
        elif loops[var].parent is not None:
            around.append(loops[var].parent)
    if bodies:
        return bodies[0]
    return max(around, key=lambda v: loops[v].trips) if around else None


def loop_instance(loop: MachineLoop, var: str) -> int | None:
    """Which of the TIR loops named ``var`` ``loop`` runs: TVM's code generator names the blocks of the TIR
    loops in program order, and LLVM numbers a repeated name (``for_body_ax2_0``, ``for_body_ax2_013``,
    ``for_body_ax2_018``: -1, 13, 18). None: no ``for_body`` block of ``var`` (a loop mapped through its
    peeled or nested blocks)."""
    for block in loop.blocks:
        m = _LOOP_BLOCK.match(block)
        if m and m.group(1) == "body" and m.group(2).startswith(var):
            digits = m.group(2)[len(var):].split(".")[0]
            if digits == "" or digits.isdigit():
                return int(digits) if digits else -1
    return None


def kernel_cycles(lowered_mod, asm_loops: list[MachineLoop], cycles: list[float]) -> dict[str, dict]:
    """Per kernel (TIR function name): ``{"cycles": serial cycles, "parallel_cycles": cycles inside parallel
    loops, "loops": [{"loop", "trips", "cycles_per_iteration"}]}`` for one call (cycles per iteration of the
    TIR loop: the machine loop's divided by its ``unroll_factor``; copies of one TIR loop averaged)."""
    out = {}
    by_function: dict[str, list[tuple[MachineLoop, float]]] = {}
    for loop, c in zip(asm_loops, cycles):
        by_function.setdefault(loop.function, []).append((loop, c))
    for gv, func in lowered_mod.functions_items():
        name = gv.name_hint
        loops = tir_loops(func)
        by_name: dict[str, list[TirLoop]] = {}
        for loop in loops:
            by_name.setdefault(loop.name, []).append(loop)
        first = {var: same[0] for var, same in by_name.items()}
        groups: dict[str, list[tuple[int | None, float]]] = {}
        for asm_name in (f"__tvm_ffi_{name}", name, f"{name}_compute_"):
            for loop, c in by_function.get(asm_name, []):
                var = tir_loop_of(loop, first)
                if var is not None:
                    groups.setdefault(var, []).append((loop_instance(loop, var), c / unroll_factor(loop)))
        record = {"cycles": 0.0, "parallel_cycles": 0.0, "loops": []}
        for var, found in groups.items():
            tir = by_name[var]
            instances = sorted({instance for instance, _ in found}, key=lambda i: -1 if i is None else i)
            if len(tir) > 1 and None not in instances and len(instances) == len(tir):
                # several TIR loops of one name (the copies of the loops inside an unrolled
                # loop): the k-th numbered block name is the k-th loop in program order
                parts = [([c for i, c in found if i == instance], [loop]) for instance, loop in zip(instances, tir)]
            else:
                parts = [([c for _, c in found], tir)]
            for per_iteration, same in parts:
                # every copy of the machine loop runs once per TIR iteration of its loop, split among the copies
                trips = sum(loop.trips for loop in same)
                c = sum(per_iteration) / len(per_iteration) * trips
                record["parallel_cycles" if same[0].parallel else "cycles"] += c
                record["loops"].append({"loop": var, "trips": trips,
                                        "cycles_per_iteration": sum(per_iteration) / len(per_iteration)})
        out[name] = record
    return out


@dataclass
class CompiledKernels:
    """The lowered kernels and their machine loops: built once, simulated on any number of cores."""

    lowered: object  # the lowered IRModule
    machine_loops: list[MachineLoop]
    triple: str

    def cycles(self, mcpu: str) -> dict[str, dict]:
        """``kernel_cycles`` of every kernel on the core ``mcpu``."""
        with tempfile.TemporaryDirectory(prefix="bisr-estimate-") as tmp:
            cycles = mca_cycles(self.machine_loops, mcpu, self.triple, Path(tmp))
        return kernel_cycles(self.lowered, self.machine_loops, cycles)


_FOR_LINE = re.compile(r"^(\s*)for (.+?) in ")


def unique_loop_names(script: str) -> str:
    """TVMScript ``script`` with every ``for`` loop variable renamed ``<name>_L<k>x`` (k counts the loops in
    program order) throughout its body. A kernel's scheduled stages all name their loops ``ax0``, ``ax1_0``, ...
    (``compute_at`` makes them), and the code generator names a loop's blocks after its variable: unique names
    tie every machine loop to its own TIR loop. (The trailing ``x`` keeps LLVM's uniquifying digits apart from
    the number.)"""
    lines, scopes, count = [], [], 0  # scopes: (indent of the for line, {old name: new name})
    for line in script.splitlines():
        indent = len(line) - len(line.lstrip())
        if line.strip():
            while scopes and scopes[-1][0] >= indent:
                scopes.pop()
        names = {old: new for _, renamed in scopes for old, new in renamed.items()}
        if (m := _FOR_LINE.match(line)) is not None:
            own = {}
            for var in (v.strip() for v in m.group(2).split(",")):
                count += 1
                own[var] = f"{var}_L{count}x"
            names.update(own)
            scopes.append((indent, own))
        if names:
            pattern = r"\b(" + "|".join(map(re.escape, sorted(names, key=len, reverse=True))) + r")\b"
            line = re.sub(pattern, lambda m: names[m.group(1)], line)
        lines.append(line)
    return "\n".join(lines)


def with_unique_loop_names(tir_mod):
    """``tir_mod`` with every PrimFunc's loops renamed by ``unique_loop_names`` (the same program: TVMScript
    printed, renamed and parsed again)."""
    import tvm

    return tvm.IRModule({gv: tvm.script.from_source(unique_loop_names(func.script()))
                         if isinstance(func, tvm.tirx.PrimFunc) else func for gv, func in tir_mod.functions_items()})


def compile_kernels(tir_mod, tvm_target: dict) -> CompiledKernels:
    """Lower and assemble every PrimFunc of ``tir_mod`` for ``tvm_target`` (see module docstring), its loops
    renamed apart first (``with_unique_loop_names``)."""
    tir_mod = with_unique_loop_names(tir_mod)
    with tempfile.TemporaryDirectory(prefix="bisr-estimate-") as tmp:
        asm_loops = machine_loops(assemble(tir_mod, tvm_target, Path(tmp)))
    return CompiledKernels(lower_module(tir_mod, tvm_target), asm_loops, tvm_target["mtriple"])
