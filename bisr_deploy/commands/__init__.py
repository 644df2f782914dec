"""One module per CLI command; ``bisr_deploy.cli`` registers them."""
