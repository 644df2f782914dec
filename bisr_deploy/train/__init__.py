"""Training BiSRNet: config (TOML), datasets and synthetic scenes, the loop, data-parallel processes."""
