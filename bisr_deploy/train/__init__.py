"""Training BiSRNet: config (TOML), the loop, data-parallel processes; its data comes from ``bisr_deploy.data``."""
