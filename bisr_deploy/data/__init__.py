"""Hyperspectral data shared by training, verify and evaluate: cube files and folders (``datasets``), synthetic
scenes and the generated coded aperture (``synthetic``), band wavelengths and resampling (``spectra``), and
``DataConfig`` (``config``)."""
