"""xray-resnet: a small residual CNN for 28x28 chest X-rays, as a fedcare task package.

Three stages of residual blocks (He et al., "Deep Residual Learning for Image
Recognition", CVPR 2016) with 16, 32 and 64 channels (28 -> 14 -> 7), global average
pooling and a linear head giving one logit per image. Normalisation is BatchNorm by
default; ``norm="group"`` uses GroupNorm (Wu & He, ECCV 2018), which DP-SGD accepts.
Training batches get a random shift of up to 2 pixels and a random horizontal flip.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812

from fedcare.tasks.torch_adapter import TorchTask

__all__ = ["ResNetSmall", "make_task"]


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
    """Stem, three residual stages (c, 2c, 4c channels), pooling, dropout, linear head."""

    def __init__(self, channels: int = 16, norm: str = "batch", dropout: float = 0.2) -> None:
        super().__init__()
        c = channels
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(1, c, 3, 1, 1, bias=False), _norm(norm, c), torch.nn.ReLU())
        self.stages = torch.nn.Sequential(Block(c, c, 1, norm), Block(c, 2 * c, 2, norm), Block(2 * c, 4 * c, 2, norm))
        self.dropout = torch.nn.Dropout(dropout)
        self.head = torch.nn.Linear(4 * c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stages(self.stem((x - 0.5) / 0.5))
        return self.head(self.dropout(h.mean(dim=(2, 3)))).squeeze(-1)


def augment(x: torch.Tensor) -> torch.Tensor:
    """Random shift (up to 2 pixels, edge padding) and horizontal flip per image."""
    n = x.shape[0]
    padded = F.pad(x, (2, 2, 2, 2), mode="replicate")
    dx, dy = torch.randint(0, 5, (2, n)).tolist()
    out = torch.stack([padded[i, :, dy[i] : dy[i] + 28, dx[i] : dx[i] + 28] for i in range(n)])
    flip = torch.rand(n) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


def make_task(
    channels: int = 16,
    norm: str = "batch",
    dropout: float = 0.2,
    pos_weight: float = 1.0,
    num_threads: int | None = None,
) -> TorchTask:
    """The task fedcare builds from the study's ``[task]`` parameters.

    ``pos_weight`` weighs the positive (pneumonia) class in the loss; a constant (not the
    site's own label balance), so it is the same at every site and safe under DP-SGD.
    """
    return TorchTask(
        name="xray-resnet",
        model=lambda: ResNetSmall(channels, norm, dropout),
        loss=torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(float(pos_weight))),
        params={"channels": channels, "norm": norm, "dropout": dropout, "pos_weight": pos_weight},
        input_shape=(1, 28, 28),
        augment=augment,
        num_threads=num_threads,
    )
