"""A PNG that people can look at: sRGB rendering of a cube and the mean spectra of a few regions.

Colour: each band's radiance is weighted by the CIE 1931 2° colour-matching functions (the analytic
multi-lobe Gaussian fit of Wyman, Sloan & Shirley 2013) to XYZ, converted to linear sRGB (D65), scaled so the
99.5th percentile maps to 1, and gamma-encoded.
"""

from __future__ import annotations

import numpy as np

from .data.spectra import CASSI_WAVELENGTHS
from .fileio import atomic_output

_XYZ_TO_SRGB = np.array([[3.2406, -1.5372, -0.4986], [-0.9689, 1.8758, 0.0415], [0.0557, -0.2040, 1.0570]])


def _lobe(wl, mu, s1, s2):
    s = np.where(wl < mu, s1, s2)
    return np.exp(-0.5 * ((wl - mu) / s) ** 2)


def cie_cmf(wavelengths_nm) -> np.ndarray:
    """CIE 1931 x̄, ȳ, z̄ at the given wavelengths, shape [3, len]."""
    wl = np.asarray(wavelengths_nm, dtype=np.float64)
    x = 1.056 * _lobe(wl, 599.8, 37.9, 31.0) + 0.362 * _lobe(wl, 442.0, 16.0, 26.7) - 0.065 * _lobe(wl, 501.1, 20.4, 26.2)
    y = 0.821 * _lobe(wl, 568.8, 46.9, 40.5) + 0.286 * _lobe(wl, 530.9, 16.3, 31.1)
    z = 1.217 * _lobe(wl, 437.0, 11.8, 36.0) + 0.681 * _lobe(wl, 459.0, 26.0, 13.8)
    return np.stack([x, y, z])


def cube_to_srgb(cube: np.ndarray, wavelengths_nm=CASSI_WAVELENGTHS) -> np.ndarray:
    """Cube [C, H, W] -> sRGB image [H, W, 3] in [0, 1]."""
    cmf = cie_cmf(wavelengths_nm)
    xyz = np.tensordot(cmf / cmf[1].sum(), np.clip(cube, 0, None), axes=(1, 0))
    rgb = np.tensordot(_XYZ_TO_SRGB, xyz, axes=(1, 0)).transpose(1, 2, 0)
    rgb = np.clip(rgb / max(np.percentile(rgb, 99.5), 1e-8), 0, 1)
    return np.where(rgb <= 0.0031308, 12.92 * rgb, 1.055 * rgb ** (1 / 2.4) - 0.055)


def pick_regions(cube: np.ndarray, count: int = 4, size: int = 8) -> list[tuple[int, int]]:
    """Top-left corners of ``count`` size x size patches with distinct mean spectra (greedy farthest-point)."""
    c, h, w = cube.shape
    step = max(size, min(h, w) // 16)
    corners = [(y, x) for y in range(0, h - size + 1, step) for x in range(0, w - size + 1, step)]
    spectra = np.stack([cube[:, y : y + size, x : x + size].mean(axis=(1, 2)) for y, x in corners])
    chosen = [int(np.argmax(spectra.sum(axis=1)))]
    while len(chosen) < min(count, len(corners)):
        dist = np.min([np.linalg.norm(spectra - spectra[i], axis=1) for i in chosen], axis=0)
        chosen.append(int(np.argmax(dist)))
    return [corners[i] for i in chosen]


def write_preview(path: str, cube: np.ndarray, title: str | None = None, size: int = 8) -> None:
    """Write the PNG for cube [C, H, W] atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    wavelengths = CASSI_WAVELENGTHS if cube.shape[0] == len(CASSI_WAVELENGTHS) else np.linspace(450, 650, cube.shape[0])
    fig, (ax_img, ax_spec) = plt.subplots(1, 2, figsize=(11, 5), gridspec_kw={"width_ratios": [1, 1.2]})
    ax_img.imshow(cube_to_srgb(cube, wavelengths))
    ax_img.set_axis_off()
    ax_img.set_title(title or f"sRGB rendering, {cube.shape[0]} bands, {cube.shape[1]} x {cube.shape[2]}")
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (y, x) in enumerate(pick_regions(cube, size=size)):
        colour = colours[i % len(colours)]
        ax_img.add_patch(Rectangle((x, y), size, size, fill=False, edgecolor=colour, linewidth=2))
        ax_spec.plot(wavelengths, cube[:, y : y + size, x : x + size].mean(axis=(1, 2)), "o-", color=colour, ms=3,
                     label=f"region {i + 1} at ({y}, {x})")
    ax_spec.set_xlabel("wavelength (nm)")
    ax_spec.set_ylabel("mean value")
    ax_spec.set_title("spectra of the marked regions")
    ax_spec.grid(alpha=0.3)
    ax_spec.legend()
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
