"""TVM compilation of BiSRNet for CPUs: bitserial BiSRConv kernels, ONNX -> Relax import, build, artifact.

See docs/compiler.md. Entry points: ``build.build_artifact`` (and ``bisr-deploy compile``),
``targets.resolve_target``; the artifact is loaded by ``bisr_deploy.runtime.load``.
"""
