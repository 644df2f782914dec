"""Benchmarking (``bisr-deploy bench``, docs in BENCHMARKS.md): backend runners and memory probes
(``runners``), per-kernel timing of a compiled network (``profile``), reports and plots (``report``)."""
