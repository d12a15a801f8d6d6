"""Image-quality flags (as cleanvision's issue types): too dark, too bright, blurry, low information, grayscale,
odd aspect ratio, odd size.

Each flag has ONE statistic where higher = more of the problem, and a default threshold (a named constant below;
flagged when statistic > threshold). The defaults were set on real data (CIFAR-10 test at 32 px, UTKFace at 64 px)
so that ordinary images are rarely flagged, while synthetic darkened (x0.25), brightened, blurred and grayscale
copies are (see tests/test_core_outliers_quality.py for the measured rates). Blur is measured at the decoded size:
compare images decoded at one size (32-64 px is what the defaults were chosen at).
"""

from __future__ import annotations

import numpy as np

from .image_stats import image_stats

DARK = 0.7
"""``darkness`` = 1 - the 99th percentile of luminance: flagged when even the brightest 1% of pixels are below
0.3. CIFAR-10 reaches 0.46 at its 99th percentile; a copy darkened to a quarter is >= 0.75."""
BRIGHT = 0.65
"""``brightness`` = the 1st percentile of luminance: flagged when even the darkest 1% of pixels are above 0.65
(washed out). CIFAR-10's 99th percentile is 0.37; a copy brightened to 1 - (1 - x) / 4 is >= 0.75."""
BLURRY = 1.2
"""``blurriness`` = -log10(variance of the Laplacian / (luminance variance + 1e-3)): a lack of fine detail relative
to the contrast, so a dark or flat-but-sharp image is not called blurry. CIFAR-10 at 32 px: median 0.06, 99th
percentile 0.74 (0.05% flagged); Gaussian blur sigma 1.5 px: median 1.5 (~93% flagged; sigma 1: ~20%); UTKFace
at 64 px (smoother faces): median 0.6, ~2% flagged; blurred with sigma 2: all >= 1.8."""
LOW_INFORMATION = 0.5
"""``low_information`` = 1 - entropy / 8 (entropy of the 256-bin luminance histogram in bits): flagged below 4
bits (flat colour, a few grey levels). CIFAR-10's 99th percentile is 0.36."""
GRAYSCALE = 0.95
"""``grayscale`` = fraction of pixels whose RGB channels differ by < 12 / 255: flagged when 95% of them are gray.
About 2.5% of CIFAR-10 images ARE grayscale and are rightly flagged. Very dark or washed-out images lose their
chroma and are often flagged too (a third of the x0.25 darkened copies)."""
ODD_ASPECT = 2.0
"""``aspect`` = max(W / H, H / W) of the original image: flagged beyond 2:1 (cleanvision's default too)."""
ODD_SIZE = 4.0
"""``size_ratio`` = max(s / m, m / s) with s = sqrt(H * W) and m its median over the set: flagged when an image's
side is over 4x or under 1/4 of the typical one (a set of equal sizes flags nothing)."""

THRESHOLDS: dict[str, float] = {"dark": DARK, "bright": BRIGHT, "blurry": BLURRY, "low_information": LOW_INFORMATION,
                                "grayscale": GRAYSCALE, "odd_aspect": ODD_ASPECT, "odd_size": ODD_SIZE}


def quality_statistics(stats: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The one statistic per flag (higher = worse) from ``image_stats`` output; the geometry flags only when it
    holds ``aspect`` and ``side`` (i.e. sizes were given)."""
    out = {
        "dark": 1 - stats["lum_p99"],
        "bright": stats["lum_p01"].copy(),
        "blurry": -np.log10(stats["rel_sharpness"] + 1e-6),
        "low_information": 1 - stats["entropy"] / 8,
        "grayscale": stats["gray_fraction"].copy(),
    }
    if "aspect" in stats and "side" in stats:
        side = np.asarray(stats["side"], np.float64)
        med = np.median(side) if len(side) else 1.0
        out["odd_aspect"] = np.asarray(stats["aspect"], np.float64)
        out["odd_size"] = np.maximum(side / med, med / np.maximum(side, 1e-9))
    return out


def quality_flags(images: np.ndarray | None = None, sizes: np.ndarray | None = None,
                  thresholds: dict[str, float] | None = None, stats: dict[str, np.ndarray] | None = None
                  ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Quality flags of uint8 (N, S, S, 3) ``images`` (or of precomputed ``image_stats`` output ``stats``).

    Args:
        sizes: (N, 2) original (H, W), for ``odd_aspect`` and ``odd_size`` (left out without them).
        thresholds: overrides of ``THRESHOLDS`` by flag name.

    Returns:
        ``({flag: bool (N,)}, {flag: float statistic (N,)})``; flagged = statistic > threshold.
    """
    if stats is None:
        if images is None:
            raise ValueError("quality_flags needs images or stats")
        stats = image_stats(images, sizes)
    elif sizes is not None:
        hw = np.asarray(sizes, dtype=np.float64).reshape(-1, 2)
        stats = {**stats, "aspect": np.maximum(hw[:, 1] / hw[:, 0], hw[:, 0] / hw[:, 1]),
                 "side": np.sqrt(hw[:, 0] * hw[:, 1])}
    values = quality_statistics(stats)
    th = {**THRESHOLDS, **(thresholds or {})}
    return {f: v > th[f] for f, v in values.items()}, values
