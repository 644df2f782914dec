"""Analysis tools over compiled kernels (not needed to build or run): ``instruction_mix`` (popcounts per output in
the TIR, static instruction counts in the disassembly; ``tools/arm_instruction_mix.py``)."""
