"""``bisr-deploy estimate``: how fast an artifact runs on a core this machine is not (docs/estimate.md).

``cores`` (the known cores and the figures assumed for each), ``loops`` (compute cycles: llvm-mca on the
machine loops of the compiled kernels x exact TIR trip counts), ``network`` (per kernel call: MACs, DRAM
traffic, roofline estimate, and the measured in-network times beside it).
"""
