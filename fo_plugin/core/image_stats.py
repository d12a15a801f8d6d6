"""Per-image statistics from decoded pixels: colour, exposure, sharpness, information, structure, geometry.

They feed the image-quality flags (``quality``) and a second outlier space (``outliers``): out-of-domain images
(documents, textures, drawings, microscopy, screenshots, flat colour) differ from photos in a few of these numbers
(no colour, a white or dark background, few colours, axis-aligned edges) even when a learned embedding places them
among the photos. Computed in batches with torch on uint8 (B, S, S, 3) arrays; the results do depend on S (the
sharpness and edge statistics are per pixel), so compare images decoded at one size.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .filters import blur_matrix, separable

# name -> (range, meaning); the ranges are those the tests check.
STATS: dict[str, tuple[tuple[float, float], str]] = {
    "brightness": ((0, 1), "mean luminance (Rec. 601)"),
    "lum_p01": ((0, 1), "1st percentile of luminance"),
    "lum_p99": ((0, 1), "99th percentile of luminance"),
    "contrast": ((0, 0.5), "luminance standard deviation"),
    "dark_fraction": ((0, 1), "fraction of pixels with luminance < 0.1"),
    "bright_fraction": ((0, 1), "fraction of pixels with luminance > 0.9"),
    "colourfulness": ((0, 1), "Hasler & Suesstrunk 2003 colourfulness M / 255 (std + 0.3 mean of rg, yb)"),
    "saturation": ((0, 1), "mean HSV saturation (max - min) / max"),
    "chroma": ((0, 1), "mean (max - min) over RGB / 255"),
    "saturation_spread": ((0, 0.5), "standard deviation of HSV saturation over the pixels (a photo mixes saturated "
                                    "and gray regions; stained micrographs and textures are uniform)"),
    "gray_fraction": ((0, 1), "fraction of pixels with max - min < 12 / 255 (grayscale-ness)"),
    "exact_gray": ((0, 1), "fraction of the mid-tone pixels (luminance 0.1-0.9; all pixels when fewer than 8 are) "
                           "with max - min <= 3 / 255: a grayscale scan, render or micrograph stored as RGB has equal "
                           "channels (up to JPEG rounding); a colour photo's mid-tones seldom do"),
    "mean_rg": ((-1, 1), "mean (R - G) / 255: colour cast, red vs green"),
    "mean_yb": ((-1, 1), "mean ((R + G) / 2 - B) / 255: colour cast, yellow vs blue"),
    "log_sharpness": ((-8, 1), "log10 of the variance of the luminance Laplacian (+1e-8)"),
    "rel_sharpness": ((0, 20), "variance of the Laplacian / (luminance variance + 1e-3): sharpness free of contrast"),
    "entropy": ((0, 8), "Shannon entropy of the 256-bin luminance histogram, bits"),
    "edge_density": ((0, 1), "fraction of pixels with Sobel gradient magnitude > 0.25"),
    "hf_energy": ((0, 1), "share of the luminance spectrum's energy (DC excluded) above half the Nyquist frequency"),
    "spectral_slope": ((-8, 4), "least-squares slope of log power vs log radial frequency of the luminance (photos "
                                "about -3.4, i.e. 1/f^2 amplitude falloff; textures flatter, smooth blobs steeper)"),
    "dominant_colour": ((0, 1), "fraction of pixels in the most common colour (RGB quantised to 8 levels each)"),
    "colour_count": ((0, 1), "share of the 512 quantised colours holding >= 0.5% of the pixels"),
    "axis_alignment": ((-1, 1), "gradient-energy-weighted cos(4 theta): 1 = edges along the axes, -1 = diagonal"),
    "coherence": ((0, 1), "global structure-tensor coherence (l1 - l2) / (l1 + l2): one dominant orientation"),
    "border_std": ((0, 0.5), "luminance standard deviation of the outer border (1/8 of the side)"),
    "dark_spots": ((0, 0.25), "fraction of pixels that are a small dark blob: a strict 3x3 minimum of the lightly "
                              "smoothed (sigma 0.7 px) luminance, > 0.01 below its 5x5 mean (nuclei, cells, granules, "
                              "dots, speckle; a photo's fine detail is mostly edges and smooth shading; strict minima "
                              "are never adjacent, so at most ~1/4; border pixels never count)"),
    "bright_spots": ((0, 0.25), "the same for small bright blobs (strict 3x3 maxima > 0.01 above the 5x5 mean)"),
}
GEOMETRY: dict[str, tuple[tuple[float, float], str]] = {
    "aspect": ((1, np.inf), "max(W / H, H / W) of the original image"),
    "side": ((0, np.inf), "sqrt(H * W) of the original image, pixels"),
}


def image_stats(images: np.ndarray, sizes: np.ndarray | None = None, batch_size: int = 512) -> dict[str, np.ndarray]:
    """Statistics of ``STATS`` for uint8 (N, S, S, 3) images, each (N,) float64.

    ``sizes``: (N, 2) original (H, W); adds ``GEOMETRY`` (aspect, side).
    """
    parts = [_batch_stats(torch.as_tensor(np.ascontiguousarray(images[s:s + batch_size])))
             for s in range(0, len(images), batch_size)]
    out = {k: np.concatenate([p[k] for p in parts]).astype(np.float64) for k in STATS} if parts else \
        {k: np.zeros(0) for k in STATS}
    if sizes is not None:
        hw = np.asarray(sizes, dtype=np.float64).reshape(-1, 2)
        out["aspect"] = np.maximum(hw[:, 1] / hw[:, 0], hw[:, 0] / hw[:, 1])
        out["side"] = np.sqrt(hw[:, 0] * hw[:, 1])
    return out


def _batch_stats(u8: torch.Tensor) -> dict[str, np.ndarray]:
    x = u8.permute(0, 3, 1, 2).float() / 255  # (B, 3, S, S)
    b, _, s, _ = x.shape
    r, g, bl = x[:, 0], x[:, 1], x[:, 2]  # (B, S, S)
    y = 0.299 * r + 0.587 * g + 0.114 * bl  # (B, S, S)
    yf = y.reshape(b, -1)
    out: dict[str, torch.Tensor] = {
        "brightness": yf.mean(1),
        "lum_p01": yf.quantile(0.01, dim=1),
        "lum_p99": yf.quantile(0.99, dim=1),
        "contrast": yf.std(1),
        "dark_fraction": (yf < 0.1).float().mean(1),
        "bright_fraction": (yf > 0.9).float().mean(1),
    }
    rg, yb = (r - g).reshape(b, -1), (0.5 * (r + g) - bl).reshape(b, -1)
    out["colourfulness"] = (rg.var(1) + yb.var(1)).sqrt() + 0.3 * (rg.mean(1) ** 2 + yb.mean(1) ** 2).sqrt()
    mx, mn = x.max(1).values, x.min(1).values  # (B, S, S)
    spread = (mx - mn).reshape(b, -1)
    sat = spread / mx.reshape(b, -1).clamp_min(1e-3)  # (B, S*S)
    out["saturation"] = sat.mean(1)
    out["saturation_spread"] = sat.std(1)
    out["chroma"] = spread.mean(1)
    out["gray_fraction"] = (spread < 12 / 255).float().mean(1)
    exact = (spread <= 3.5 / 255).float()  # (B, S*S)
    mid = ((yf > 0.1) & (yf < 0.9)).float()  # near black or white, every pixel is gray: count the mid-tones
    out["exact_gray"] = torch.where(mid.sum(1) >= 8, (exact * mid).sum(1) / mid.sum(1).clamp_min(1), exact.mean(1))
    out["mean_rg"], out["mean_yb"] = rg.mean(1), yb.mean(1)

    y1 = y[:, None]  # (B, 1, S, S)
    lap = F.conv2d(y1, torch.tensor([[[[0.0, 1, 0], [1, -4, 1], [0, 1, 0]]]]))  # (B, 1, S-2, S-2)
    lap_var = lap.reshape(b, -1).var(1)
    out["log_sharpness"] = torch.log10(lap_var + 1e-8)
    out["rel_sharpness"] = lap_var / (yf.var(1) + 1e-3)

    hist = torch.zeros(b, 256).scatter_add_(1, (yf * 255).round().long().clamp(0, 255), torch.ones_like(yf))
    p = hist / hist.sum(1, keepdim=True)
    out["entropy"] = -(p * torch.log2(p.clamp_min(1e-12))).sum(1)

    sob = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]]) / 4
    gx = F.conv2d(y1, sob.view(1, 1, 3, 3))[:, 0]  # (B, S-2, S-2)
    gy = F.conv2d(y1, sob.t().reshape(1, 1, 3, 3))[:, 0]
    mag2 = (gx ** 2 + gy ** 2).reshape(b, -1)
    out["edge_density"] = (mag2 > 0.25 ** 2).float().mean(1)
    e = mag2.sum(1).clamp_min(1e-12)
    gxx, gyy, gxy = (gx ** 2).reshape(b, -1).sum(1), (gy ** 2).reshape(b, -1).sum(1), (gx * gy).reshape(b, -1).sum(1)
    # cos(4 theta) = ((gx^2 - gy^2)^2 - 4 gx^2 gy^2) / |g|^4, weighted by |g|^2
    c4 = ((gx ** 2 - gy ** 2) ** 2 - 4 * gx ** 2 * gy ** 2).reshape(b, -1).sum(1)
    out["axis_alignment"] = c4 / e
    out["coherence"] = ((gxx - gyy) ** 2 + 4 * gxy ** 2).sqrt() / (gxx + gyy).clamp_min(1e-12)

    spec = torch.fft.rfft2(y - y.mean((1, 2), keepdim=True)).abs() ** 2  # (B, S, S//2+1)
    fy = torch.fft.fftfreq(s).abs()[:, None]
    fx = torch.fft.rfftfreq(s)[None, :]
    high = (torch.maximum(fy, fx) > 0.25).float()
    out["hf_energy"] = (spec * high).sum((1, 2)) / spec.sum((1, 2)).clamp_min(1e-12)
    full = torch.fft.fft2(y - y.mean((1, 2), keepdim=True)).abs() ** 2  # (B, S, S)
    rad = (torch.fft.fftfreq(s)[:, None] ** 2 + torch.fft.fftfreq(s)[None, :] ** 2).sqrt()  # (S, S)
    band = (rad > 0) & (rad <= 0.5)
    lr = torch.log(rad[band])
    lr = lr - lr.mean()
    lp = torch.log(full[:, band] + 1e-10)  # (B, R)
    out["spectral_slope"] = ((lp - lp.mean(1, keepdim=True)) @ lr / (lr @ lr)).clamp(-8, 4)

    q = (x * 7.999).long()  # (B, 3, S, S) in 0..7
    code = (q[:, 0] * 64 + q[:, 1] * 8 + q[:, 2]).reshape(b, -1)
    counts = torch.zeros(b, 512).scatter_add_(1, code, torch.ones_like(code, dtype=torch.float))
    frac = counts / code.shape[1]
    out["dominant_colour"] = frac.max(1).values
    out["colour_count"] = (frac >= 0.005).float().mean(1)

    # blobs: local extrema of the lightly smoothed luminance (a difference-of-box blob detector at the finest scale)
    ys = separable(y1, blur_matrix(s, 0.7))  # (B, 1, S, S)
    nb = F.unfold(F.pad(ys, (1, 1, 1, 1), mode="replicate"), 3)  # (B, 9, S*S) each pixel's 3x3 neighbourhood
    nb = torch.cat([nb[:, :4], nb[:, 5:]], 1)  # (B, 8, S*S) the 8 neighbours
    yc, avg = ys.reshape(b, 1, -1), F.avg_pool2d(F.pad(ys, (2, 2, 2, 2), mode="replicate"), 5, 1).reshape(b, 1, -1)
    # strict extrema (a plateau beside an edge is not a spot), 0.01 beyond their 5x5 mean
    out["dark_spots"] = ((yc < nb.min(1, keepdim=True).values) & (avg - yc > 0.01)).float().mean((1, 2))
    out["bright_spots"] = ((yc > nb.max(1, keepdim=True).values) & (yc - avg > 0.01)).float().mean((1, 2))

    k = max(1, s // 8)
    ring = torch.ones(s, s, dtype=torch.bool)
    ring[k:-k, k:-k] = False
    out["border_std"] = y[:, ring].std(1)
    return {n: v.double().numpy() for n, v in out.items()}
