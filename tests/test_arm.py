"""ARM (aarch64) deployment: cross-linking, qemu emulation, NEON code, and the native C++ loader.

Tests that need the emulation environment build it with tools/arm_env.py (cached under $BISR_ARM_ENV or
~/.cache/bisr-deploy/arm-env, about 20 s the first time); they are skipped only when the host has no aarch64
cross toolchain or qemu-user (.ci/setup-arm.sh installs both in CI).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from bisr_deploy import cross, emulation
from bisr_deploy.errors import BisrError

from .conftest import ARTIFACT_SIZE as SIZE
from .conftest import EXPECTED, NATIVE_DIR, REPO, arm_env_tool, host_site, make_native, run_native_host

pytestmark = pytest.mark.needs_tvm

ARM_TARGET = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}


@pytest.fixture(scope="session")
def native_arm(arm_env, tmp_path_factory):
    """bisr_run cross-compiled for aarch64 against the emulation environment's TVM runtime."""
    return make_native(arm_env.site, tmp_path_factory.mktemp("native-arm"), cross.linux_tool("g++"))


EM_X86_64, EM_AARCH64 = 62, 183


def elf_machine(path) -> int:
    """The ELF header's e_machine field."""
    header = open(path, "rb").read(20)
    assert header[:4] == b"\x7fELF"
    return int.from_bytes(header[18:20], "little")


def disassemble(path) -> dict[str, list[str]]:
    """aarch64-linux-gnu-objdump -d of ``path`` -> {function symbol: its instruction mnemonics}."""
    from bisr_deploy.analysis.instruction_mix import disassemble as objdump_functions

    return {name: [m for m, _ in code] for name, code in objdump_functions(path, cross.linux_tool("objdump")).items()}


# ---- the cross toolchain and the emulation environment on a small TVM kernel ----

def _xnor_popcount_library(target, path, fcompile=None):
    """C[i] = popcount(A[i] XOR B[i]) over uint32, the core of the bitserial kernels, exported to ``path``."""
    import tvm
    import tvm.tirx
    from tvm import te

    n = te.var("n")
    a = te.placeholder((n,), "uint32", name="A")
    b = te.placeholder((n,), "uint32", name="B")
    c = te.compute((n,), lambda i: tvm.tirx.popcount(a[i] ^ b[i]).astype("int32"), name="C")
    func = te.create_prim_func([a, b, c]).with_attr("global_symbol", "xnor_popcount")
    tvm.tirx.build(func, target=tvm.target.Target(target)).export_library(str(path), fcompile=fcompile)


_RUN_XNOR = """
import sys, numpy as np, tvm
lib = tvm.runtime.load_module(sys.argv[1])
a, b = np.load(sys.argv[2]), np.load(sys.argv[3])
c = tvm.runtime.tensor(np.zeros(a.shape, np.int32))
lib["xnor_popcount"](tvm.runtime.tensor(a), tvm.runtime.tensor(b), c)
np.save(sys.argv[4], c.numpy())
"""


def test_xnor_popcount_kernel_on_aarch64_equals_x86(arm_env, tmp_path):
    rng = np.random.default_rng(5)
    a = rng.integers(0, 2**32, 1003, dtype=np.uint32)
    b = rng.integers(0, 2**32, 1003, dtype=np.uint32)
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    (tmp_path / "run.py").write_text(_RUN_XNOR)
    _xnor_popcount_library("llvm", tmp_path / "x86.so")
    _xnor_popcount_library(ARM_TARGET, tmp_path / "arm.so", fcompile=cross.linux_fcompile())
    assert elf_machine(tmp_path / "arm.so") == EM_AARCH64 and elf_machine(tmp_path / "x86.so") == EM_X86_64
    kernel = [m for name, code in disassemble(tmp_path / "arm.so").items() if name.startswith("xnor_popcount")
              for m in code]
    assert "cnt" in kernel  # NEON per-byte popcount

    subprocess.run([sys.executable, str(tmp_path / "run.py"), tmp_path / "x86.so", tmp_path / "a.npy",
                    tmp_path / "b.npy", tmp_path / "x86.npy"], check=True)
    arm_env.run_python(tmp_path / "run.py", [tmp_path / "arm.so", tmp_path / "a.npy", tmp_path / "b.npy",
                                             tmp_path / "arm.npy"], timeout=300)
    x86, arm = np.load(tmp_path / "x86.npy"), np.load(tmp_path / "arm.npy")
    expected = np.unpackbits((a ^ b).view(np.uint8)).reshape(-1, 32).sum(axis=1)
    np.testing.assert_array_equal(x86, expected)
    np.testing.assert_array_equal(arm, x86)


_RUN_KERNELS = """
import sys, numpy as np, tvm
lib = tvm.runtime.load_module(sys.argv[1])
cases = np.load(sys.argv[2])
outs = {}
for name in sorted({key.split("/")[0] for key in cases.files}):
    args = [tvm.runtime.tensor(cases[f"{name}/{i}"]) for i in range(int(cases[f"{name}/n"]))]
    out = tvm.runtime.tensor(np.zeros(tuple(cases[f"{name}/shape"]), np.float32))
    lib[name](*args, out)
    outs[name] = out.numpy()
np.savez(sys.argv[3], **outs)
"""


@pytest.mark.parametrize("cpu", ["generic", "dotprod"])
def test_neon_bisrconv_kernels_equal_x86_bit_for_bit(arm_env, tmp_path, cpu):
    """The BiSR-Conv kernels with the NEON schedule (4 lanes, blocks of 4 vectors, popcount sums in the
    epilogue, the fused LayerNorm's per-pixel stages), run under qemu, give the x86 kernels' bits (which
    test_compile checks against the reference), also at odd sizes: rows of 3 and 5 vectors (blocks of 3 and
    1), 7 channels, groups straddling words, tap-packed windows, rows of 13 and 6 pixels (1- and 2-lane
    vectors: the ``sli`` pack of 2 lanes, TVM's scalar pack); rows of 16 pixels take the epilogue tables
    (``neon.py``) of 16, 32, 48 and 64 entries (tbl over 1-4 registers: 12 and 28 channels 1x1, the
    grouped 3x3 of 4 channels per group with its border shifts in rows of one and of three 16-pixel blocks,
    56 channels 1x1); ``--cpu dotprod`` sums the
    popcounts with ``udot`` (the disassembly has no widening adds left) and records ``asimddp``."""
    import tvm

    from bisr_deploy.compile.bitserial import BiSRConvSpec, Fusion, bisrconv_primfunc, epilogue_lut_entries
    from bisr_deploy.compile.lowering import kernel_params
    from bisr_deploy.compile.targets import resolve_target

    from .test_compile import random_case

    rng = np.random.default_rng(11)
    cases = [(40, 5, 12, 3, 4, Fusion(post=True)), (112, 4, 16, 3, 28, Fusion(post=True)),
             (28, 3, 20, 1, 1, Fusion("concat", norm_epsilon=1e-5)),
             (7, 3, 20, 1, 1, Fusion("mean", split_input=True, residual=True)), (28, 6, 8, 3, 1, Fusion("concat")),
             (12, 2, 16, 1, 1, Fusion()), (28, 3, 32, 1, 1, Fusion("mean", residual=True)),
             (28, 2, 16, 1, 1, Fusion("concat", norm_epsilon=1e-5)), (56, 2, 32, 1, 1, Fusion("concat", post=True)),
             (16, 3, 48, 3, 4, Fusion(residual=True)), (9, 2, 13, 3, 1, Fusion()), (8, 2, 6, 1, 1, Fusion("concat"))]
    arm, x86 = resolve_target("arm", cpu), resolve_target("x86", "native")
    arrays, kernels = {}, {target.arch: {} for target in (arm, x86)}
    for k, (c, h, w, ks, group, fusion) in enumerate(cases):
        p = (ks - 1) // 2
        spec = BiSRConvSpec(1, c, h, w, (ks, ks), (p,) * 4, group)
        node = lambda inputs: type("Node", (), {"spec": spec, "inputs": inputs})  # noqa: E731
        layers = [random_case(rng, c, h, w, ks, group) for _ in range(fusion.layers)]
        xs = [x for _, _, x in layers]
        if not fusion.split_input:  # one X: a mean pair's layers read its two halves
            xs = [np.concatenate(xs, axis=1)] if fusion.combine == "mean" else xs[:1]
        args = [*xs, *(v for _, inputs, _ in layers for v in kernel_params(node(inputs)).values())]
        if fusion.norm:
            args += [rng.standard_normal(c).astype(np.float32) for _ in range(2)]
        if fusion.residual:
            args.append(rng.standard_normal((1, c, h, w)).astype(np.float32))
        c_out = fusion.output_channels(spec)
        if fusion.post:
            args += [rng.standard_normal(c_out).astype(np.float32) for _ in range(3)]
        name = f"k{k}"
        arrays.update({f"{name}/{i}": np.ascontiguousarray(a) for i, a in enumerate(args)})
        arrays[f"{name}/n"], arrays[f"{name}/shape"] = np.array(len(args)), np.array([1, c_out, h, w])
        for target in (arm, x86):
            kernels[target.arch][name] = bisrconv_primfunc(spec, target.schedule, fusion).with_attr(
                "global_symbol", name)
    assert arm.schedule.pixel_block == 4 and arm.schedule.pack == "sli" and x86.schedule.pack == "or"
    assert [epilogue_lut_entries(BiSRConvSpec(1, c, h, w, (ks, ks), ((ks - 1) // 2,) * 4, group), arm.schedule)
            for c, h, w, ks, group, _ in cases] == [0, 48, 0, 0, 0, 16, 32, 32, 64, 48, 0, 0]
    np.savez(tmp_path / "cases.npz", **arrays)
    tvm.compile(tvm.IRModule(kernels["arm"]), target=arm.tvm_target).export_library(
        str(tmp_path / "arm.so"), fcompile=cross.linux_fcompile())
    mnemonics = {m for name, code in disassemble(tmp_path / "arm.so").items() if name.startswith("k") for m in code}
    assert "cnt" in mnemonics and (("udot" in mnemonics) == (cpu == "dotprod"))
    assert ("uadalp" in mnemonics or "uaddlp" in mnemonics) == (cpu == "generic")
    assert arm.required_features == (("asimd", "asimddp") if cpu == "dotprod" else ("asimd",))
    (tmp_path / "run.py").write_text(_RUN_KERNELS)
    arm_env.run_python(tmp_path / "run.py", [tmp_path / "arm.so", tmp_path / "cases.npz", tmp_path / "arm.npz"],
                       timeout=600)
    x86_lib = tvm.compile(tvm.IRModule(kernels["x86"]), target=x86.tvm_target)
    got = np.load(tmp_path / "arm.npz")
    cases_file = np.load(tmp_path / "cases.npz")
    for name in kernels["x86"]:
        n = int(cases_file[f"{name}/n"])
        out = tvm.runtime.empty(tuple(cases_file[f"{name}/shape"]), "float32")
        x86_lib[name](*(tvm.runtime.tensor(cases_file[f"{name}/{i}"]) for i in range(n)), out)
        np.testing.assert_array_equal(got[name].view(np.uint32), out.numpy().view(np.uint32), err_msg=name)


def test_guest_python_is_aarch64_and_isolated_from_host(arm_env):
    out = arm_env.run_python(code="import platform, sys, numpy; print(platform.machine(), numpy.__version__); "
                                  "print(any('pyenv' in p or 'site-packages' in p for p in sys.path))",
                             timeout=300).stdout.split()
    assert out == ["aarch64", np.__version__, "False"]


def test_arm_env_build_is_idempotent(arm_env):
    env, built = arm_env_tool().build(arm_env.root)
    assert not built and env.versions == arm_env.versions
    assert env.versions["apache-tvm"] == __import__("tvm").__version__


def test_missing_environment_is_one_clear_error(tmp_path):
    with pytest.raises(BisrError, match="no aarch64 emulation environment .*setup-arm.sh"):
        emulation.load_env(tmp_path / "nothing")


def test_guest_failure_is_reported_with_its_stderr(arm_env):
    with pytest.raises(BisrError, match="(?s)exited with status 3.*boom"):
        arm_env.run_python(code="import sys; sys.stderr.write('boom\\n'); sys.exit(3)", timeout=300)


def test_android_target_needs_an_ndk(tmp_path, monkeypatch):
    monkeypatch.delenv(cross.NDK_ENV_VAR, raising=False)
    with pytest.raises(BisrError, match="--ndk DIR or set ANDROID_NDK_HOME"):
        cross.ndk_root()
    with pytest.raises(BisrError, match="is not an Android NDK"):
        cross.ndk_root(tmp_path)
    monkeypatch.setenv(cross.NDK_ENV_VAR, str(tmp_path))
    with pytest.raises(BisrError, match="is not an Android NDK"):
        cross.android_fcompile()
    monkeypatch.delenv(cross.NDK_ENV_VAR)
    proc = subprocess.run([sys.executable, "-m", "bisr_deploy.cli", "compile", "--target", "android-arm64",
                           "--output", tmp_path / "out"], capture_output=True, text=True)
    assert proc.returncode == 2 and not (tmp_path / "out").exists()
    assert proc.stderr == "error: --target android-arm64 needs the Android NDK: pass --ndk DIR or set ANDROID_NDK_HOME\n"


def test_missing_cross_tool_names_its_debian_package(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(BisrError, match="g\\+\\+-aarch64-linux-gnu"):
        cross.linux_fcompile()
    with pytest.raises(BisrError, match="qemu-user"):
        cross.require_tool("qemu-aarch64")


# ---- the real network: `compile --target arm`, NEON code, emulated and native runs ----

@pytest.fixture(scope="session")
def scene(kaist, tmp_path_factory):
    """(truth [28,64,64], snapshot [64,118], mask [64,64], dir with snapshot.npy and mask.npy): a KAIST crop."""
    import torch

    from bisr_deploy.cassi import simulate_snapshot

    cube, mask = kaist
    cube, mask = np.ascontiguousarray(cube[:, :SIZE, :SIZE]), np.ascontiguousarray(mask[:SIZE, :SIZE])
    snapshot = simulate_snapshot(torch.from_numpy(cube)[None], torch.from_numpy(mask))[0].numpy()
    d = tmp_path_factory.mktemp("scene")
    np.save(d / "snapshot.npy", snapshot)
    np.save(d / "mask.npy", mask)
    return cube, snapshot, mask, d


def _second_input(scene):
    """Another input for the same artifact: the scene's snapshot seen through the transposed mask."""
    _, snapshot, mask, _ = scene
    return snapshot[:, ::-1].copy(), np.ascontiguousarray(mask.T)


@pytest.fixture(scope="session")
def x86_cubes(x86_artifact, scene):
    from bisr_deploy import runtime

    model = runtime.load(x86_artifact)
    return [model(scene[1], scene[2]), model(*_second_input(scene))]


@pytest.fixture(scope="session")
def emulated_cubes(arm_env, arm_artifact, scene):
    """Both inputs through the aarch64 artifact in one emulated process."""
    return emulation.run_artifact_many(arm_artifact, [(scene[1], scene[2]), _second_input(scene)], env=arm_env)


@pytest.fixture(scope="session")
def x86_cube(x86_cubes):
    return x86_cubes[0]


@pytest.fixture(scope="session")
def emulated_cube(emulated_cubes):
    return emulated_cubes[0]


def test_arm_artifact_is_aarch64_with_neon_popcount_in_every_binary_convolution(arm_artifact):
    import json

    manifest = json.loads((arm_artifact / "manifest.json").read_text())
    assert manifest["target"]["triple"] == "aarch64-linux-gnu"
    assert manifest["target"]["required_cpu_features"] == ["asimd"]
    assert elf_machine(arm_artifact / "model.so") == EM_AARCH64
    functions = disassemble(arm_artifact / "model.so")
    kernels = {layer["function"] for layer in manifest["layers"] if layer["kind"] in ("bisrconv", "bisrconv_feedforward")}
    assert len(kernels) >= 10
    for kernel in kernels:  # the kernel and its parallel body (<kernel>_compute_)
        code = [m for name, mnemonics in functions.items() if name.startswith(kernel) for m in mnemonics]
        assert code, f"no code for {kernel}"
        assert "cnt" in code, f"{kernel} has no NEON cnt"
    floats = {layer["function"] for layer in manifest["layers"] if layer["kind"] == "conv2d"}
    assert floats and all("cnt" not in functions.get(f, []) for f in floats)  # the check can tell them apart


def test_arm_artifact_is_refused_natively_on_x86(arm_artifact):
    from bisr_deploy import runtime
    from bisr_deploy.hostcpu import host_arch

    if host_arch() != "aarch64":
        with pytest.raises(BisrError, match="asimd|aarch64"):
            runtime.load(arm_artifact)
    else:
        pytest.skip(EXPECTED + "this host is aarch64")


def test_emulated_arm_artifact_equals_x86(emulated_cubes, x86_cubes, scene):
    """Same network, same input, NEON under qemu vs AVX2: floats may differ in their last bits (measured: 23.6 %
    of the values, by at most 6.0e-8), but no sign of a binarized layer flips (that would show as ~1e-2)."""
    from bisr_deploy.metrics import psnr

    truth = scene[0]
    for emulated_cube, x86_cube in zip(emulated_cubes, x86_cubes, strict=True):
        assert emulated_cube.shape == x86_cube.shape == (28, SIZE, SIZE) and emulated_cube.dtype == np.float32
        assert np.abs(emulated_cube - x86_cube).max() < 1e-5
    assert np.abs(x86_cubes[0] - x86_cubes[1]).mean() > 1e-2  # two different inputs, two different cubes
    assert abs(psnr(emulated_cubes[0], truth) - psnr(x86_cubes[0], truth)) < 1e-3
    assert psnr(x86_cubes[0], truth) > 25  # a real reconstruction, not a constant


def test_run_command_emulates_an_arm_artifact(arm_artifact, emulated_cubes, scene, tmp_path):
    _, _, _, d = scene
    proc = subprocess.run([sys.executable, "-m", "bisr_deploy.cli", "run", str(arm_artifact), "--measurement",
                           str(d / "snapshot.npy"), "--mask", str(d / "mask.npy"), "--output", str(tmp_path / "c.npy")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert np.array_equal(np.load(tmp_path / "c.npy"), emulated_cubes[0])


def test_bench_runs_on_aarch64(arm_env, arm_artifact, tmp_path):
    """`bisr-deploy bench --artifact` on an aarch64 machine (here the emulated one, whose Python has the runtime
    and the CLI but no torch, onnx or ONNX Runtime): the command a board user runs for measured numbers.
    (qemu's times are not ARM speed; only the code path is checked.)"""
    skips = [arg for backend in ("onnxruntime-fp32", "tvm-fp32", "pytorch-eager") for arg in ("--skip", backend)]
    proc = arm_env.run_python(code="import sys; from bisr_deploy.cli import main; main(sys.argv[1:])",
                              args=["--quiet", "bench", "--artifact", str(arm_artifact), "--repeat", "1", *skips,
                                    "--output-dir", str(tmp_path / "bench")], pythonpath=[REPO], timeout=900)
    report = json.loads((tmp_path / "bench" / "bench.json").read_text())
    assert report["machine"]["platform"].startswith("Linux") and "aarch64" in report["machine"]["platform"]
    assert report["target"]["mtriple"] == "aarch64-linux-gnu" and report["size"] == [SIZE, SIZE]
    assert {r["backend"] for r in report["results"]} == {"compiled"}
    assert all(r["median_ms"] > 0 for r in report["results"])
    assert sum(row["bisrconvs"] for row in report["layers"]) == 59
    assert [row["function"] for row in report["layers"]] == [row["function"] for row in report["network_layers"]]
    assert "wrote" in proc.stdout and (tmp_path / "bench" / "bench.png").is_file()


def test_emulated_run_reports_the_guest_loaders_refusal(arm_env, x86_artifact, scene):
    _, snapshot, mask, _ = scene
    with pytest.raises(BisrError, match=r"^\S+x86 \(compiled for cpu haswell\) needs CPU features this machine lacks: "):
        emulation.run_artifact(x86_artifact, snapshot, mask, env=arm_env)


def test_native_loader_on_aarch64_equals_python_loader(native_arm, arm_env, arm_artifact, emulated_cube, scene, tmp_path):
    d = scene[3]
    arm_env.run([native_arm, arm_artifact, d / "snapshot.npy", d / "mask.npy", tmp_path / "cube.npy"], timeout=600)
    cube = np.load(tmp_path / "cube.npy")
    assert cube.dtype == np.float32
    np.testing.assert_array_equal(cube, emulated_cube)


def test_native_loader_on_x86_equals_python_loader(native_host, x86_artifact, x86_cube, scene, tmp_path):
    d = scene[3]
    proc = run_native_host(native_host, x86_artifact, d / "snapshot.npy", d / "mask.npy", tmp_path / "cube.npy")
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "cube.npy"), x86_cube)
    # Fortran-order inputs (what MATLAB-minded writers and np.asfortranarray produce) read as the same arrays
    for name in ("snapshot", "mask"):
        np.save(tmp_path / f"{name}-f.npy", np.asfortranarray(np.load(d / f"{name}.npy")))
        assert np.load(tmp_path / f"{name}-f.npy").flags.f_contiguous
    proc = run_native_host(native_host, x86_artifact, tmp_path / "snapshot-f.npy", tmp_path / "mask-f.npy", tmp_path / "cube-f.npy")
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "cube-f.npy"), x86_cube)


def test_native_loader_refusals(native_host, x86_artifact, arm_artifact, scene, tmp_path):
    d = scene[3]
    out = tmp_path / "cube.npy"

    def refused(artifact, *inputs):
        proc = run_native_host(native_host, artifact, *inputs, out)
        assert proc.returncode == 2 and not out.exists()
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ")
        return lines[0]

    assert "compiled for aarch64-linux-gnu" in refused(arm_artifact, d / "snapshot.npy", d / "mask.npy")
    assert "takes 2 inputs" in refused(x86_artifact, d / "snapshot.npy")
    assert "mask must be 64 x 64" in refused(x86_artifact, d / "snapshot.npy", d / "snapshot.npy")
    bad = np.load(d / "snapshot.npy")
    bad[3, 5] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    assert "NaN" in refused(x86_artifact, tmp_path / "nan.npy", d / "mask.npy")
    np.save(tmp_path / "int.npy", np.zeros((SIZE, SIZE + 54), np.int32))
    assert "not float32 or float64" in refused(x86_artifact, tmp_path / "int.npy", d / "mask.npy")

    tampered = tmp_path / "tampered"
    shutil.copytree(x86_artifact, tampered)
    params = bytearray((tampered / "params.npz").read_bytes())
    params[len(params) // 2] ^= 1  # one bit of one weight
    (tampered / "params.npz").write_bytes(bytes(params))
    assert "params.npz: sha256 does not match" in refused(tampered, d / "snapshot.npy", d / "mask.npy")
    (tampered / "params.npz").write_bytes(bytes(params[:-10]))
    assert "size differs" in refused(tampered, d / "snapshot.npy", d / "mask.npy")
    assert "no such artifact directory" in refused(tmp_path / "nothing", d / "snapshot.npy", d / "mask.npy")


JAVA_MAIN = """
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.Paths;
import org.bisr.BisrNative;

public class Main {  // Main ARTIFACT MEASUREMENT.f32 MASK.f32 CUBE.f32 (raw little-endian float32)
    static float[] read(String path) throws Exception {
        ByteBuffer b = ByteBuffer.wrap(Files.readAllBytes(Paths.get(path))).order(ByteOrder.LITTLE_ENDIAN);
        float[] out = new float[b.remaining() / 4];
        b.asFloatBuffer().get(out);
        return out;
    }
    public static void main(String[] args) throws Exception {
        try (BisrNative model = new BisrNative(args[0])) {
            float[] cube = model.reconstruct(read(args[1]), read(args[2]));
            ByteBuffer b = ByteBuffer.allocate(cube.length * 4).order(ByteOrder.LITTLE_ENDIAN);
            b.asFloatBuffer().put(cube);
            Files.write(Paths.get(args[3]), b.array());
        } catch (IllegalStateException e) {
            System.err.println("error: " + e.getMessage());
            System.exit(2);
        }
    }
}
"""


@pytest.mark.needs_tool("javac", "java")
def test_jni_binding_on_x86_equals_python_loader(native_host, x86_artifact, x86_cube, scene, tmp_path):
    """org.bisr.BisrNative (the Android binding of docs/arm.md) on the host JVM, through libbisr_jni."""
    javac, java = shutil.which("javac"), shutil.which("java")
    java_home = os.path.dirname(os.path.dirname(os.path.realpath(javac)))
    build = native_host.parent
    subprocess.run(["make", "-s", "-C", str(NATIVE_DIR), f"TVM_SITE={host_site()}", f"BUILD={build}", "jni",
                    f"JNI_CFLAGS=-I{java_home}/include -I{java_home}/include/linux"], check=True, capture_output=True)
    (tmp_path / "Main.java").write_text(JAVA_MAIN)
    subprocess.run([javac, "-d", str(tmp_path / "classes"), str(tmp_path / "Main.java"),
                    str(NATIVE_DIR / "jni" / "org" / "bisr" / "BisrNative.java")], check=True, capture_output=True)
    _, snapshot, mask, _ = scene
    snapshot.astype("<f4").tofile(tmp_path / "y.f32")
    mask.astype("<f4").tofile(tmp_path / "mask.f32")
    site = host_site()
    command = [java, f"-Djava.library.path={build}:{site}/tvm/lib:{site}/tvm_ffi/lib", "-cp", str(tmp_path / "classes"),
               "Main", str(x86_artifact)]
    proc = subprocess.run(command + [tmp_path / "y.f32", tmp_path / "mask.f32", tmp_path / "cube.f32"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    cube = np.fromfile(tmp_path / "cube.f32", "<f4").reshape(x86_cube.shape)
    np.testing.assert_array_equal(cube, x86_cube)
    proc = subprocess.run(command + [tmp_path / "y.f32", tmp_path / "y.f32", tmp_path / "out.f32"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip() == "error: the mask has the wrong size"
