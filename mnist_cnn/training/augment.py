"""Training-time distortions of MNIST images, on the device, per image: a small random rotation,
scale, shear and shift for each image of a batch, and optionally an elastic distortion (Simard,
Steinkraus and Platt 2003: a random displacement field smoothed by a Gaussian), through torch's own
`affine_grid` and `grid_sample` (one batched call, no per-image Python loop).

The randomness comes from a generator of its own, seeded by (seed, epoch): a repeated or resumed
epoch distorts every image the same way, and the global RNG is untouched.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Distortion:
    """The largest distortion drawn: uniform in [-x, x] for each (scale: 1 + [-x, x])."""

    degrees: float = 10.0
    scale: float = 0.1
    shear: float = 0.1
    shift: float = 2.0  # pixels of a 28x28 image
    elastic: float = 0.0  # Simard's alpha: the smoothed field's scale in pixels; 0 is off
    sigma: float = 4.0  # Simard's sigma: the Gaussian's width in pixels

    def scaled(self, strength: float) -> Distortion:
        """The same kind of distortion with every affine limit times `strength`."""
        return dataclasses.replace(
            self,
            degrees=self.degrees * strength,
            scale=self.scale * strength,
            shear=self.shear * strength,
            shift=self.shift * strength,
        )

    def generator(self, seed: int, epoch: int) -> torch.Generator:
        """The epoch's generator (CPU: the same draws on every device)."""
        state = int(np.random.SeedSequence([seed, epoch, 0xA11]).generate_state(1)[0])
        return torch.Generator().manual_seed(state)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The batch (N x 1 x 28 x 28) with each image distorted by its own random affine map;
        pixels that come from outside the image repeat its border (MNIST's borders are empty)."""
        n = len(images)
        u = torch.rand(n, 5, generator=generator) * 2 - 1  # five numbers per image in [-1, 1]
        angle = u[:, 0] * math.radians(self.degrees)
        scale = 1 + u[:, 1] * self.scale
        shear = u[:, 2] * self.shear
        shift = u[:, 3:] * (2 * self.shift / images.shape[-1])  # grid units: the image is 2 wide
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack(
            [
                torch.stack([cos, -sin + shear * cos, shift[:, 0]], 1),
                torch.stack([sin, cos + shear * sin, shift[:, 1]], 1),
            ],
            1,
        ).to(images.device, images.dtype)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        if self.elastic:  # drawn after the affine numbers, so those stay as they were without it
            grid = grid + self.displacement(images, generator)
        return F.grid_sample(images, grid, padding_mode="border", align_corners=False)

    def displacement(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Each image's elastic field (N x H x W x 2, grid units): uniform noise in [-1, 1] per
        pixel and axis, smoothed by a Gaussian of `sigma` pixels, times `elastic` pixels."""
        n, _, h, w = images.shape
        noise = torch.rand(n * 2, 1, h, w, generator=generator) * 2 - 1
        radius = math.ceil(3 * self.sigma)
        x = torch.arange(-radius, radius + 1, dtype=torch.float32)
        kernel = torch.exp(-(x**2) / (2 * self.sigma**2))
        kernel = kernel / kernel.sum()
        # separable: a row pass then a column pass; zeros beyond the edge (MNIST's border is empty)
        field = F.conv2d(noise, kernel.view(1, 1, 1, -1), padding=(0, radius))
        field = F.conv2d(field, kernel.view(1, 1, -1, 1), padding=(radius, 0))
        pixels = field.view(n, 2, h, w).permute(0, 2, 3, 1) * self.elastic
        return (pixels * (2 / torch.tensor([w, h]))).to(images.device, images.dtype)
