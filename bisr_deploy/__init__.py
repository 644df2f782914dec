"""bisr-deploy: BiSRNet from PyTorch training to compiled bitserial kernels."""

__version__ = "0.1.0"
