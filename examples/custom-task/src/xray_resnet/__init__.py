"""xray-resnet: a small residual CNN for 28x28 chest X-rays, as a fedcare task package.

Three stages of residual blocks (He et al., "Deep Residual Learning for Image
Recognition", CVPR 2016) with 16, 32 and 64 channels (28 -> 14 -> 7; ``channels``,
``downsample``), pooling (``head``) and a linear head giving one logit per image. Normalisation is BatchNorm by
default; ``norm="group"`` uses GroupNorm (Wu & He, ECCV 2018), which DP-SGD accepts.
Training batches get a random affine transform (rotation, scale, shift; ``augment``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F  # noqa: N812

from fedcare.errors import ConfigError
from fedcare.tasks.torch_adapter import TorchTask

__all__ = ["AUGMENTATIONS", "HEADS", "BalancedBCE", "ResNetSmall", "make_task"]


def _norm(kind: str, channels: int) -> torch.nn.Module:
    return torch.nn.BatchNorm2d(channels) if kind == "batch" else torch.nn.GroupNorm(4, channels)


class Block(torch.nn.Module):
    """Two 3x3 convolutions with a shortcut (1x1 projection when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int, norm: str) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.norm1 = _norm(norm, cout)
        self.conv2 = torch.nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.norm2 = _norm(norm, cout)
        self.short = (
            torch.nn.Sequential(torch.nn.Conv2d(cin, cout, 1, stride, bias=False), _norm(norm, cout))
            if stride != 1 or cin != cout
            else torch.nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.norm1(self.conv1(x)))
        return F.relu(self.norm2(self.conv2(h)) + self.short(x))


class ResNetSmall(torch.nn.Module):
    """Stem, three residual stages (c, 2c, 4c channels), pooling, dropout, linear head.

    ``head="avg"`` averages the last 7x7 map (position-free); ``head="flatten"`` keeps
    where in the image a feature is (lung fields sit at fixed places on a chest film);
    ``head="pool3"`` max-pools it to 3x3 first (coarse position, as the built-in CNN's head).
    ``downsample="stride"`` halves the map with a stride-2 first convolution in a stage;
    ``"max"`` with a 2x2 max-pooling before the stage (as the built-in CNN).
    """

    def __init__(
        self,
        channels: int = 16,
        norm: str = "batch",
        dropout: float = 0.2,
        head: str = "avg",
        downsample: str = "stride",
    ) -> None:
        super().__init__()
        c = channels
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(1, c, 3, 1, 1, bias=False), _norm(norm, c), torch.nn.ReLU())
        if downsample == "max":
            down: list[torch.nn.Module] = [torch.nn.MaxPool2d(2), Block(c, 2 * c, 1, norm)]
            down += [torch.nn.MaxPool2d(2), Block(2 * c, 4 * c, 1, norm)]
        else:
            down = [Block(c, 2 * c, 2, norm), Block(2 * c, 4 * c, 2, norm)]
        self.stages = torch.nn.Sequential(Block(c, c, 1, norm), *down)
        self.dropout = torch.nn.Dropout(dropout)
        self.pooling = head
        self.head = torch.nn.Linear(4 * c * {"avg": 1, "flatten": 49, "pool3": 9}[head], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stages(self.stem((x - 0.5) / 0.5))
        if self.pooling == "avg":
            h = h.mean(dim=(2, 3))
        else:
            h = (F.max_pool2d(h, 2) if self.pooling == "pool3" else h).flatten(1)
        return self.head(self.dropout(h)).squeeze(-1)


def shift_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random shift (up to 2 pixels, edge padding) and horizontal flip per image."""
    n = x.shape[0]
    padded = F.pad(x, (2, 2, 2, 2), mode="replicate")
    dx, dy = torch.randint(0, 5, (2, n), generator=generator).tolist()
    out = torch.stack([padded[i, :, dy[i] : dy[i] + 28, dx[i] : dx[i] + 28] for i in range(n)])
    flip = torch.rand(n, generator=generator) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


def affine(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random rotation (+-10 deg), scale (+-10 %) and shift (+-10 %) per image; no flip (anatomy is not symmetric)."""
    n = x.shape[0]
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(10)
    scale = 1 + (torch.rand(n, generator=generator) * 2 - 1) * 0.1
    tx, ty = (
        torch.rand(2, n, generator=generator) * 2 - 1
    ) * 0.2  # grid coordinates span [-1, 1]: 0.2 is 10 % of the side
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="border", align_corners=False)


class BalancedBCE(torch.nn.Module):
    """Binary cross-entropy where each class weighs half of a training batch's loss.

    The batch stands for the site: under label skew (one hospital 90 % pneumonia, another
    43 %) every site then trains toward the same balanced prior, as the built-in CNN's
    class-balanced loss does with the site's label counts. Not for DP-SGD: a record's
    label would change the weight of the others in its batch (refused with an error).
    """

    def __init__(self) -> None:
        super().__init__()
        self.reduction = "mean"  # TorchTask sets "sum" under DP-SGD

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.reduction != "mean":
            raise ConfigError(
                "xray-resnet cannot train with DP-SGD: balanced = true weighs each record by its batch's labels "
                "(one record changes the others' weights); use a constant pos_weight"
            )
        positive = y.mean()
        if 0.0 < float(positive) < 1.0:
            weight = torch.where(y >= 0.5, 0.5 / positive, 0.5 / (1 - positive))
        else:
            weight = torch.ones_like(y)
        return F.binary_cross_entropy_with_logits(logits, y, weight=weight)


AUGMENTATIONS = {"affine": affine, "shift-flip": shift_flip, "none": None}
HEADS = ("avg", "flatten", "pool3")


def make_task(
    channels: int = 16,
    norm: str = "batch",
    dropout: float = 0.2,
    pos_weight: float = 1.0,
    augment: str = "affine",
    head: str = "avg",
    balanced: bool = False,
    downsample: str = "stride",
    num_threads: int | None = None,
) -> TorchTask:
    """The task fedcare builds from the study's ``[task]`` parameters.

    ``pos_weight`` weighs the positive (pneumonia) class in the loss; a constant (not the
    site's own label balance), so it is the same at every site and safe under DP-SGD.
    ``balanced`` instead weighs each class half of every batch (:class:`BalancedBCE`; not
    under DP-SGD). ``augment`` is one of ``affine``, ``shift-flip``, ``none``; ``head`` is
    ``avg``, ``flatten`` or ``pool3``.
    """
    if balanced and pos_weight != 1.0:
        raise ConfigError(f"give balanced = true or a pos_weight, not both (pos_weight = {pos_weight})")
    if augment not in AUGMENTATIONS:
        raise ConfigError(f"augment must be one of {', '.join(AUGMENTATIONS)}, got {augment!r}")
    if downsample not in ("stride", "max"):
        raise ConfigError(f"downsample must be 'stride' or 'max', got {downsample!r}")
    if head not in HEADS:
        raise ConfigError(f"head must be one of {', '.join(HEADS)}, got {head!r}")
    return TorchTask(
        name="xray-resnet",
        model=lambda: ResNetSmall(channels, norm, dropout, head, downsample),
        loss=BalancedBCE() if balanced else torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(float(pos_weight))),
        params={
            "channels": channels,
            "norm": norm,
            "dropout": dropout,
            "pos_weight": pos_weight,
            "augment": augment,
            "head": head,
            "balanced": balanced,
            "downsample": downsample,
        },
        input_shape=(1, 28, 28),
        augment=AUGMENTATIONS[augment],
        num_threads=num_threads,
    )
