"""TVM compilation of BiSRNet for CPUs: bitserial BiSRConv kernels, ONNX -> Relax import, build.

See docs/compiler.md. Entry points: ``build.build_artifact`` (and ``bisr-deploy compile``),
``targets.resolve_target`` (the ``TARGETS`` registry); the artifact's format is ``bisr_deploy.artifact``,
and ``bisr_deploy.runtime.load`` runs it without this package.
"""
