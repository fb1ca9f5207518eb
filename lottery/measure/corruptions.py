"""CIFAR-10-C regenerated from a clean test set (Hendrycks & Dietterich 2019).

Written from the corruption definitions and CIFAR-10-C's own severity parameters (which differ
from ImageNet-C's), batched over images with torch and numpy, without ImageMagick, OpenCV or
scikit-image. Two departures, both reported where results are logged: motion blur (also used by
snow) is a Gaussian-weighted line kernel rather than ImageMagick's, and frost is absent, since it
blends in six photographs of frost that ship with the original code only. Every function takes
float images (N, H, W, 3) in [0, 1], a severity 1..5 and a numpy Generator.
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def _nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).float()


def _nhwc(t: torch.Tensor) -> np.ndarray:
    return t.permute(0, 2, 3, 1).numpy().astype(np.float64)


def _conv_same(t: torch.Tensor, kernel: torch.Tensor, mode: str = "reflect") -> torch.Tensor:
    """Per-channel 2-D correlation with a (kh, kw) or per-image (N, kh, kw) kernel, same size."""
    n, c, h, w = t.shape
    k = kernel if kernel.dim() == 3 else kernel.expand(n, *kernel.shape)
    kh, kw = k.shape[-2:]
    padded = F.pad(t.float().reshape(1, n * c, h, w), (kw // 2, kw // 2, kh // 2, kh // 2), mode=mode)
    weight = k.repeat_interleave(c, 0).unsqueeze(1).float()
    return F.conv2d(padded, weight, groups=n * c).reshape(n, c, h, w)


def _gaussian_kernel(sigma: float, truncate: float = 4.0) -> torch.Tensor:
    radius = max(1, int(truncate * sigma + 0.5))
    r = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (r / max(sigma, 1e-6)) ** 2)
    g = g / g.sum()
    return torch.outer(g, g)


def _gaussian_blur(x: np.ndarray, sigma: float) -> np.ndarray:
    return _nhwc(_conv_same(_nchw(x), _gaussian_kernel(sigma)))


def gaussian_noise(x, s, rng):
    c = [0.04, 0.06, 0.08, 0.09, 0.10][s - 1]
    return x + rng.normal(scale=c, size=x.shape)


def shot_noise(x, s, rng):
    c = [500, 250, 100, 75, 50][s - 1]
    return rng.poisson(x * c) / c


def impulse_noise(x, s, rng):
    """Salt and pepper on a fraction of the values, half of each."""
    c = [0.01, 0.02, 0.03, 0.05, 0.07][s - 1]
    out = x.copy()
    hit = rng.random(x.shape) < c
    salt = rng.random(x.shape) < 0.5
    out[hit & salt], out[hit & ~salt] = 1.0, 0.0
    return out


def defocus_blur(x, s, rng):
    """Convolution with an anti-aliased disk (radius r, then a 3x3 Gaussian of sigma a)."""
    r, a = [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)][s - 1]
    grid = torch.arange(-8, 9, dtype=torch.float64)
    disk = ((grid[:, None] ** 2 + grid[None, :] ** 2) <= r**2).double()
    disk = disk / disk.sum()
    g = torch.exp(-0.5 * (torch.arange(-1, 2, dtype=torch.float64) / a) ** 2)
    g = g / g.sum()
    disk = _conv_same(disk[None, None], torch.outer(g, g))[0, 0]
    return _nhwc(_conv_same(_nchw(x), disk))


def glass_blur(x, s, rng):
    """Blur, shuffle neighbouring pixels locally (sequentially, as defined), blur again."""
    sigma, delta, iterations = [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)][s - 1]
    out = np.floor(np.clip(_gaussian_blur(x, sigma), 0, 1) * 255) / 255
    n, h, w, _ = out.shape
    idx = np.arange(n)
    for _ in range(iterations):
        for i in range(h - delta, delta, -1):
            for j in range(w - delta, delta, -1):
                dx, dy = rng.integers(-delta, delta, size=(2, n))
                a, b = out[idx, i, j].copy(), out[idx, i + dy, j + dx].copy()
                out[idx, i, j], out[idx, i + dy, j + dx] = b, a
    return _gaussian_blur(out, sigma)


def _line_blur(t: torch.Tensor, radius: int, sigma: float, angles: np.ndarray) -> torch.Tensor:
    """Motion blur: Gaussian-weighted average of samples along a ray at each image's angle."""
    n, c, h, w = t.shape
    steps = torch.arange(0, radius + 1, dtype=torch.float32)
    weights = torch.exp(-0.5 * (steps / sigma) ** 2)
    weights = weights / weights.sum()
    theta = torch.from_numpy(np.deg2rad(angles)).float()
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    out = torch.zeros_like(t)
    for k, wk in zip(steps, weights):
        sx = xs[None] + k * torch.cos(theta)[:, None, None]
        sy = ys[None] + k * torch.sin(theta)[:, None, None]
        grid = torch.stack([2 * sx / (w - 1) - 1, 2 * sy / (h - 1) - 1], -1)
        out += wk * F.grid_sample(t, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return out


def motion_blur(x, s, rng):
    radius, sigma = [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)][s - 1]
    angles = rng.uniform(-45, 45, size=len(x))
    return _nhwc(_line_blur(_nchw(x), radius, sigma, angles))


def _clipped_zoom(t: torch.Tensor, factor: float) -> torch.Tensor:
    """Zoom into the centre by ``factor`` and crop back to the original size (bilinear)."""
    h = t.shape[-1]
    ch = int(math.ceil(h / factor))
    top = (h - ch) // 2
    size = int(round(ch * factor))
    z = F.interpolate(t[..., top:top + ch, top:top + ch], size=(size, size), mode="bilinear", align_corners=True)
    trim = (size - h) // 2
    return z[..., trim:trim + h, trim:trim + h]


def zoom_blur(x, s, rng):
    top = [1.06, 1.11, 1.16, 1.21, 1.26][s - 1]
    t = _nchw(x)
    factors = np.arange(1, top, 0.01)
    out = t.clone()
    for f in factors:
        out += _clipped_zoom(t, float(f))
    return _nhwc(out / (len(factors) + 1))


def _grey(x):
    return x @ np.array([0.299, 0.587, 0.114])


def snow(x, s, rng):
    """Streaks of thresholded, zoomed, motion-blurred noise over a brightened image."""
    loc, scale, zoom, threshold, radius, sigma, mix = [
        (0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
        (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9), (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
        (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)][s - 1]
    n, h, w, _ = x.shape
    layer = torch.from_numpy(rng.normal(loc, scale, size=(n, 1, h, w))).float()
    layer = _clipped_zoom(layer, zoom)
    layer[layer < threshold] = 0
    layer = torch.floor(layer.clamp(0, 1) * 255) / 255
    layer = _nhwc(_line_blur(layer, radius, sigma, rng.uniform(-135, -45, size=n)))
    bright = np.maximum(x, _grey(x)[..., None] * 1.5 + 0.5)
    x = mix * x + (1 - mix) * bright
    return x + layer + np.rot90(layer, 2, axes=(1, 2))


def _plasma(n: int, size: int, decay: float, rng) -> np.ndarray:
    """Diamond-square height maps (n, size, size) in [0, 1]."""
    m = np.zeros((n, size, size))
    step, wibble = size, 100.0

    def noisy_mean(a):
        return a / 4 + wibble * rng.uniform(-wibble, wibble, a.shape)

    while step >= 2:
        half = step // 2
        corners = m[:, 0:size:step, 0:size:step]
        sq = corners + np.roll(corners, -1, axis=1)
        sq = sq + np.roll(sq, -1, axis=2)
        m[:, half:size:step, half:size:step] = noisy_mean(sq)
        centre = m[:, half:size:step, half:size:step]
        corners = m[:, 0:size:step, 0:size:step]
        m[:, 0:size:step, half:size:step] = noisy_mean(centre + np.roll(centre, 1, axis=1)
                                                      + corners + np.roll(corners, -1, axis=2))
        m[:, half:size:step, 0:size:step] = noisy_mean(centre + np.roll(centre, 1, axis=2)
                                                      + corners + np.roll(corners, -1, axis=1))
        step //= 2
        wibble /= decay
    m -= m.min(axis=(1, 2), keepdims=True)
    return m / m.max(axis=(1, 2), keepdims=True)


def fog(x, s, rng):
    strength, decay = [(0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)][s - 1]
    peak = x.max(axis=(1, 2, 3), keepdims=True)
    x = x + strength * _plasma(len(x), 32, decay, rng)[:, : x.shape[1], : x.shape[2], None]
    return x * peak / (peak + strength)


def brightness(x, s, rng):
    """Raise HSV value by c: for fixed hue and saturation RGB scales with V (black turns grey)."""
    c = [0.05, 0.1, 0.15, 0.2, 0.3][s - 1]
    v = x.max(axis=3, keepdims=True)
    v2 = np.clip(v + c, 0, 1)
    return np.where(v > 0, x * v2 / np.maximum(v, 1e-12), v2)


def contrast(x, s, rng):
    c = [0.75, 0.5, 0.4, 0.3, 0.15][s - 1]
    means = x.mean(axis=(1, 2), keepdims=True)
    return (x - means) * c + means


def elastic(x, s, rng):
    """A random affine warp of three control points, then a smooth random displacement field."""
    size = x.shape[1]
    alpha, sigma, affine = [(0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06),
                            (0.1, 0.04, 0.05), (0.1, 0.03, 0.03)][s - 1]
    alpha, sigma, affine = alpha * size, sigma * size, affine * size
    n = len(x)
    centre, half = size // 2, size // 3
    src = np.array([[centre + half, centre + half], [centre + half, centre - half],
                    [centre - half, centre - half]], float)
    dst = src[None] + rng.uniform(-affine, affine, size=(n, 3, 2))
    # inverse map: for each output pixel, where it comes from (solve dst -> src per image)
    ones = np.ones((n, 3, 1))
    a = np.concatenate([dst, ones], 2)
    inv = np.linalg.solve(a, np.broadcast_to(src, (n, 3, 2)))  # (n, 3, 2): [x y 1] @ inv
    ys, xs = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    pix = np.stack([xs, ys, np.ones_like(xs)], -1).reshape(-1, 3).astype(float)
    srcpos = np.einsum("pk,nkj->npj", pix, inv).reshape(n, size, size, 2)
    if alpha > 0:
        noise = torch.from_numpy(rng.uniform(-1, 1, size=(n, 2, size, size))).float()
        field = _conv_same(noise, _gaussian_kernel(sigma, truncate=3.0)).numpy() * alpha
        srcpos = srcpos + field.transpose(0, 2, 3, 1)
    grid = torch.from_numpy(2 * srcpos / (size - 1) - 1).float()
    out = F.grid_sample(_nchw(x), grid, mode="bilinear", padding_mode="reflection", align_corners=True)
    return _nhwc(out)


def _pil_each(x, fn):
    u8 = np.uint8(np.clip(x, 0, 1) * 255)
    return np.stack([np.asarray(fn(Image.fromarray(im))) for im in u8]).astype(np.float64) / 255


def pixelate(x, s, rng):
    c = [0.95, 0.9, 0.85, 0.75, 0.65][s - 1]
    size = x.shape[1]
    small = int(size * c)
    return _pil_each(x, lambda im: im.resize((small, small), Image.BOX).resize((size, size), Image.BOX))


def jpeg(x, s, rng):
    quality = [80, 65, 58, 50, 40][s - 1]

    def roundtrip(im):
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=quality)
        buf.seek(0)
        return Image.open(buf).convert("RGB")

    return _pil_each(x, roundtrip)


# The released CIFAR-10-C's 15 corruptions, by their file names; None: cannot be regenerated.
CORRUPTIONS = {
    "gaussian_noise": gaussian_noise, "shot_noise": shot_noise, "impulse_noise": impulse_noise,
    "defocus_blur": defocus_blur, "glass_blur": glass_blur, "motion_blur": motion_blur,
    "zoom_blur": zoom_blur, "snow": snow, "frost": None, "fog": fog, "brightness": brightness,
    "contrast": contrast, "elastic_transform": elastic, "pixelate": pixelate, "jpeg_compression": jpeg,
}


def corrupt(images: np.ndarray, name: str, severity: int, seed: int) -> np.ndarray:
    """Corrupt uint8 images (N, H, W, 3); returns uint8 like the released files."""
    fn = CORRUPTIONS[name]
    rng = np.random.default_rng([seed, severity, sorted(CORRUPTIONS).index(name)])
    out = fn(images.astype(np.float64) / 255, severity, rng)
    return np.uint8(np.clip(out, 0, 1) * 255)
