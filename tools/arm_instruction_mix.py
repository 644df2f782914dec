#!/usr/bin/env python
"""Instruction mix of BiSRNet's bitserial BiSR-Conv kernels on ARM (NEON) and x86: popcounts per output
from the lowered TIR, static instruction counts from the disassembly (``bisr_deploy/analysis/instruction_mix.py``).

Every distinct BiSR-Conv kernel of ``BiSRNet()`` at --height x --width (``model_kernel_shapes``) is scheduled
and compiled for aarch64 (``--target arm``: 4 uint32 lanes) and for each --x86-cpu, without linking; nothing
is run, so no speed is measured. Tables: (a) TIR popcounts per output element against the ideal
ceil(Cg·KH·KW/32) words, (b) the aarch64 kernel body's static instruction mix (aarch64-linux-gnu-objdump),
(c) the same for x86 (objdump). --artifact DIR takes (b)/(c) from a compiled artifact's model.so instead, one
manifest layer per kernel shape, and checks its counts against the standalone kernel's.

    python tools/arm_instruction_mix.py [--height 64 --width 64] [--x86-cpu znver4 --x86-cpu haswell]
        [--artifact DIR] [--json OUT.json] [--markdown OUT.md]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bisr_deploy.analysis import instruction_mix as im  # noqa: E402
from bisr_deploy.artifact import read_manifest  # noqa: E402
from bisr_deploy.errors import BisrError  # noqa: E402
from bisr_deploy.fileio import atomic_output  # noqa: E402
from bisr_deploy.hostcpu import cpu_model_name  # noqa: E402

DEFAULT_X86 = ("znver4", "haswell")


def machine() -> str:
    return f"{cpu_model_name()}, {platform.system()} {platform.machine()}"


def artifact_mix(artifact: Path, shapes, rows) -> dict:
    """{"triple", "kernels": {kernel name: (layer function, mix, same)}} from an artifact's model.so, one
    manifest layer per shape; ``same``: whether the mix equals the standalone build's in ``rows`` (None when
    the artifact's cpu was not analysed)."""
    manifest = read_manifest(artifact)
    arch, cpu, triple = manifest.target.arch, manifest.target.cpu, manifest.target.triple
    layers = manifest.bisrconv_layers()
    functions = im.disassemble(artifact / "model.so", im.objdump_for(arch))
    label = "arm" if arch == "arm" else f"x86 {cpu}"
    row_by_name = {row["kernel"]: row for row in rows}
    out = {}
    for shape in shapes:
        s = shape.spec
        layer = next((layer for layer in layers if layer.shape == [s.batch, s.channels, s.height, s.width]
                      and layer.kernel == list(s.kernel) and layer.group == s.group), None)
        if layer is None:
            raise BisrError(f"{artifact}: no BiSR-Conv layer of shape {shape.name} at {s.height}x{s.width} "
                            "(compile it at the same --height/--width)")
        mix = im.instruction_mix(im.kernel_body(functions, layer.function), im.classes_for(arch))
        standalone = row_by_name[shape.name]["builds"].get(label)
        out[shape.name] = (layer.function, mix, None if standalone is None else mix == standalone["mix"])
    return {"triple": triple, "kernels": out}


def analyse(height: int, width: int, x86_cpus) -> dict:
    from bisr_deploy.compile.targets import resolve_target

    shapes = im.model_kernel_shapes(height=height, width=width)
    builds = {"arm": resolve_target("arm")} | {f"x86 {cpu}": resolve_target("x86", cpu) for cpu in x86_cpus}
    rows = []
    with tempfile.TemporaryDirectory(prefix="bisr-mix-") as tmp:
        for shape in shapes:
            s = shape.spec
            row = {"kernel": shape.name, "channels": s.channels, "kernel_size": list(s.kernel), "group": s.group,
                   "group_channels": s.group_channels, "layers": shape.layers,
                   "sizes": [list(hw) for hw in shape.sizes], "analysed_at": [s.height, s.width],
                   "bits_per_output": s.group_channels * s.kernel[0] * s.kernel[1], "builds": {}}
            for label, target in builds.items():
                result = im.analyse_kernel(s, target, tmp)
                row["builds"][label] = {"lanes": target.lanes, **result}
            rows.append(row)
    return {"height": height, "width": width, "shapes": shapes, "rows": rows,
            "targets": {label: t.tvm_target for label, t in builds.items()}}


def _table(headers, body) -> list[list[str]]:
    return [list(map(str, headers))] + [[str(c) for c in r] for r in body]


def tables(result: dict) -> list[tuple[str, list[list[str]]]]:
    """(title, rows with a header row first) for (a), (b) and one (c) per x86 cpu."""
    rows = result["rows"]
    out = [("(a) popcounts per output element, lowered TIR of the ARM-scheduled kernel (exact, dynamic)", _table(
        ["kernel", "layers", "sizes", "Cg·KH·KW", "ideal u32 words", "TIR u32 popcounts/output", "TIR/ideal",
         "NEON 128-bit popcounts/output"],
        [[r["kernel"], r["layers"], " ".join(f"{h}x{w}" for h, w in r["sizes"]), r["bits_per_output"],
          r["builds"]["arm"]["tir"]["ideal_words"], f"{r['builds']['arm']['tir']['words_per_output']:g}",
          f"{r['builds']['arm']['tir']['words_per_output'] / r['builds']['arm']['tir']['ideal_words']:.2f}",
          f"{r['builds']['arm']['tir']['vector_ops_per_output']:g}"] for r in rows]))]
    for label in rows[0]["builds"]:
        mix_names = list(rows[0]["builds"][label]["mix"])
        title = ("(b) aarch64 (NEON) kernel body, static instruction counts" if label == "arm" else
                 f"(c) {label} kernel body ({rows[0]['builds'][label]['lanes']} uint32 lanes), "
                 "static instruction counts")
        out.append((title, _table(["kernel", *mix_names],
                                  [[r["kernel"], *(r["builds"][label]["mix"][k] for k in mix_names)] for r in rows])))
    return out


def render_text(title: str, table: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = [title] + ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
                       for row in table]
    return "\n".join(lines)


def render_markdown(title: str, table: list[list[str]]) -> str:
    lines = [f"**{title}**", "", "| " + " | ".join(table[0]) + " |", "|" + "---|" * len(table[0])]
    lines += ["| " + " | ".join(row) + " |" for row in table[1:]]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--x86-cpu", action="append", default=None,
                        help=f"x86 cpu to compare (repeatable; default {' '.join(DEFAULT_X86)})")
    parser.add_argument("--artifact", type=Path, default=None,
                        help="also count the kernels in this compiled artifact's model.so (same --height/--width)")
    parser.add_argument("--json", type=Path, default=None, help="write every number as JSON here")
    parser.add_argument("--markdown", type=Path, default=None, help="write the tables as Markdown here")
    args = parser.parse_args(argv)
    try:
        for out in (args.json, args.markdown):  # fail before the minute of compiling, not after
            if out is not None and not out.parent.is_dir():
                raise BisrError(f"cannot write {out}: directory {out.parent} does not exist")
        import tvm

        command = "python tools/arm_instruction_mix.py " + " ".join(sys.argv[1:] if argv is None else argv)
        result = analyse(args.height, args.width, tuple(args.x86_cpu or DEFAULT_X86))
        artifact = artifact_mix(args.artifact, result["shapes"], result["rows"]) if args.artifact else None
        objdump = subprocess.run([im.objdump_for("arm"), "--version"],
                                 capture_output=True, text=True).stdout.splitlines()[0]
        header = (f"`{command.strip()}`  \nmachine: {machine()}; apache-tvm {tvm.__version__}; aarch64 {objdump}; "
                  f"BiSRNet() at {args.height} x {args.width}: {sum(r['layers'] for r in result['rows'])} BiSR-Convs, "
                  f"{len(result['rows'])} distinct kernels (each analysed at its largest resolution)")
        sections = tables(result)
        if artifact:
            names = list(next(iter(artifact["kernels"].values()))[1])
            sections.append((f"artifact {args.artifact} ({artifact['triple']}), static instruction counts",
                             _table(["kernel", "function", *names, "same as standalone"],
                                    [[k, fn, *(mix[n] for n in names), {None: "n/a", True: "yes", False: "NO"}[same]]
                                     for k, (fn, mix, same) in artifact["kernels"].items()])))
        print(header.replace("`", "").replace("  \n", "\n"))
        for title, table in sections:
            print()
            print(render_text(title, table))
        if args.markdown:
            with atomic_output(args.markdown) as tmp:
                Path(tmp).write_text(header + "\n\n" + "\n\n".join(render_markdown(t, tb) for t, tb in sections) + "\n")
        if args.json:
            doc = {"command": command.strip(), "machine": machine(), "tvm": tvm.__version__, "objdump": objdump,
                   "height": args.height, "width": args.width, "targets": result["targets"], "kernels": result["rows"],
                   "artifact": None if artifact is None else {
                       "path": str(args.artifact), "triple": artifact["triple"],
                       "kernels": {k: {"function": fn, "mix": mix, "same_as_standalone": same}
                                   for k, (fn, mix, same) in artifact["kernels"].items()}}}
            with atomic_output(args.json) as tmp:
                Path(tmp).write_text(json.dumps(doc, indent=1) + "\n")
    except BisrError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
