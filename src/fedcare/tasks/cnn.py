"""A small convolutional network for binary image classification (28x28 chest X-rays).

Architecture: three blocks of ``Conv3x3 -> norm -> ReLU -> MaxPool2`` (computed as
``MaxPool2 -> ReLU``, the same function) with ``c, 2c, 4c``
channels (28 -> 14 -> 7 -> 3), then dropout and ``Linear(4c*3*3, 1)``: a LeNet/VGG-style
network (LeCun et al., Proc. IEEE 1998; Simonyan & Zisserman, ICLR 2015) with batch
normalisation (Ioffe & Szegedy, ICML 2015) or group normalisation (Wu & He, ECCV 2018;
Hsieh et al., ICML 2020 recommend it for non-IID federated data). With ``channels=16``
it has about 24k parameters.

BatchNorm's running statistics are part of the :class:`~fedcare.types.ModelState` and are
averaged by FedAvg like the weights. ``num_batches_tracked`` (int64) is averaged too and
cast back to int64 by the fold; it only matters for ``momentum=None``, which is not used.

Fit config keys (all optional): ``optimizer`` ("adam" | "sgd", default "adam"), ``lr``
(0.001), ``batch_size`` (64), ``local_epochs`` (1) or ``local_steps`` (overrides epochs),
``augment`` (True: random affine per image, rotation +-10 deg, scale +-10 %, shift +-10 %),
``class_weight`` ("balanced" | "none", default "balanced": each class weighs half of the
site's loss, computed from the site's own labels), ``lr_schedule`` ("constant" |
"cosine": cosine decay to 0 within this fit call, Loshchilov & Hutter, ICLR 2017) and
``proximal_mu`` (0: FedProx's proximal term, Li et al., MLSys 2020). With a ``scaffold_c``
instruction record (and ``optimizer="sgd"``) the task applies SCAFFOLD's correction
through :class:`fedcare.tasks.torch_common.LocalCorrections`.

Randomness (initialisation, batches, augmentation, dropout) comes only from the numpy
generator passed in, through a ``torch.Generator`` seeded from it: same generator, same
model (for a given number of torch threads).

``precision="bf16"`` trains with bfloat16 autocast (mixed precision, Micikevicius et al.,
ICLR 2018; Kalamkar et al. 2019 for bfloat16): convolutions and the head compute in bf16
on CPUs with bf16 units (AVX512-BF16/AMX), while weights, optimizer state, the loss and
every prediction stay float32. A training step took 0.6x the CPU time of float32 on
the 2-core development machine (benchmarks/cnn_precision.py); on a CPU without bf16 units it is
slower than float32, and a warning says so. ``precision="auto"`` trains in bf16 where the
CPU has bf16 units and in float32 elsewhere (the shipped chest X-ray study's choice).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F  # noqa: N812

from fedcare.errors import ConfigError, DataError
from fedcare.task import ArrayDataset, FitContext
from fedcare.tasks.logreg import binary_metrics
from fedcare.tasks.torch_common import (
    LocalCorrections,
    check_precision,
    load_state,
    make_optimizer,
    module_state,
    read_int,
    resolved_precision,
    train_steps,
    training_arithmetic,
    use_threads,
)
from fedcare.types import ConfigValue, EvalResult, FitResult, ModelState

__all__ = ["CnnTask", "SmallCnn"]

Norm = Literal["batch", "group", "none"]
_NORMS = ("batch", "group", "none")
Precision = Literal["fp32", "bf16", "auto"]
_EVAL_BATCH = 1024


def _norm_layer(kind: str, channels: int) -> torch.nn.Module:
    if kind == "batch":
        return torch.nn.BatchNorm2d(channels)
    if kind == "group":
        return torch.nn.GroupNorm(min(4, channels), channels)
    return torch.nn.Identity()


class SmallCnn(torch.nn.Module):
    """Three conv blocks and a linear head producing one logit per image.

    Parameters
    ----------
    in_channels : int
        Channels of the input images.
    channels : int
        Channels of the first block (doubled in each next block).
    norm : {"batch", "group", "none"}
        Normalisation after each convolution.
    dropout : float
        Dropout probability before the head (masks drawn from the caller's generator).
    side : int
        Height and width of the (square) input.
    """

    def __init__(self, *, in_channels: int, channels: int, norm: str, dropout: float, side: int) -> None:
        super().__init__()
        widths = [in_channels, channels, 2 * channels, 4 * channels]
        layers: list[torch.nn.Module] = []
        for cin, cout in zip(widths[:-1], widths[1:], strict=True):
            # Pooling before the ReLU: max and ReLU commute, so outputs and gradients are those
            # of conv -> norm -> ReLU -> pool bit for bit, with the ReLU (in place) on a quarter
            # of the values (a training step ~8 % less CPU, measured). Same parameter names.
            layers += [
                torch.nn.Conv2d(cin, cout, 3, padding=1, bias=norm == "none"),
                _norm_layer(norm, cout),
                torch.nn.MaxPool2d(2),
                torch.nn.ReLU(inplace=True),
            ]
        self.features = torch.nn.Sequential(*layers)
        self.dropout = dropout
        self.head = torch.nn.Linear(widths[-1] * (side // 2 // 2 // 2) ** 2, 1)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Return logits of shape ``(n,)``; dropout is active only in training mode."""
        # channels-last activations: oneDNN's CPU convolution and pooling kernels for this
        # layout are faster (a training step 1.28x faster on 1 thread, measured); same function.
        h = self.features(((x - 0.5) / 0.5).contiguous(memory_format=torch.channels_last)).flatten(1)
        if self.training and self.dropout > 0:
            keep = torch.rand(h.shape, generator=generator) >= self.dropout
            h = h * keep / (1.0 - self.dropout)
        return self.head(h).reshape(-1)


def _random_affine(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Rotate (+-10 deg), scale (+-10 %) and shift (+-10 %) each image at random."""
    n = x.shape[0]

    def uniform(scale: float) -> torch.Tensor:
        return (torch.rand(n, generator=generator) * 2 - 1) * scale

    angle, scale = uniform(math.radians(10)), 1 + uniform(0.1)
    tx, ty = uniform(0.2), uniform(0.2)  # affine_grid coordinates span [-1, 1]: 0.2 = 10 % of the side
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="border", align_corners=False)


def _read_choice(config: Mapping[str, ConfigValue], key: str, default: str, allowed: tuple[str, ...]) -> str:
    value = config.get(key, default)
    if value not in allowed:
        raise ConfigError(f"config {key!r} must be one of {', '.join(allowed)}, got {value!r}")
    return str(value)


def _read_bool(config: Mapping[str, ConfigValue], key: str, default: bool) -> bool:
    value = config.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"config {key!r} must be true or false, got {value!r}")
    return value


class CnnTask:
    """Binary image classification with :class:`SmallCnn` and BCE loss.

    Parameters
    ----------
    image_shape : tuple[int, int, int] (default: (1, 28, 28))
        ``(channels, height, width)`` of the inputs; height = width >= 8.
    channels : int (default: 16)
        Width of the first convolution block.
    norm : {"batch", "group", "none"} (default: "batch")
        Normalisation layer.
    dropout : float (default: 0.2)
        Dropout before the head, in [0, 1).
    num_threads : int or None (default: None)
        torch intra-op threads set before each fit/predict (``None`` leaves torch's
        setting). One thread per site is fastest when sites train in parallel threads on
        few cores. Not part of the task hash: it changes only speed (and float rounding).
    precision : {"fp32", "bf16", "auto"} (default: "fp32")
        Arithmetic of the training passes: "bf16" autocasts convolutions and the head to
        bfloat16 (weights, optimizer, loss and predictions stay float32); "auto" is bf16 on
        a CPU with bf16 units and fp32 elsewhere. Part of the task hash: it changes the
        trained model, not only its speed.
    """

    name = "cnn"
    #: The node passes a :class:`~fedcare.task.FitContext` (SCAFFOLD's site state).
    accepts_context = True
    #: Site data may be a :class:`~fedcare.task.RecordSource` (a DICOM folder read a batch at a time).
    streams = True

    def __init__(
        self,
        *,
        image_shape: tuple[int, int, int] = (1, 28, 28),
        channels: int = 16,
        norm: Norm = "batch",
        dropout: float = 0.2,
        num_threads: int | None = None,
        precision: Precision = "fp32",
    ) -> None:
        if len(image_shape) != 3 or image_shape[1] != image_shape[2] or image_shape[1] < 8 or image_shape[0] < 1:
            raise ConfigError(f"image_shape must be (channels, side, side) with side >= 8, got {image_shape}")
        if channels < 1:
            raise ConfigError(f"channels must be at least 1, got {channels}")
        if norm not in _NORMS:
            raise ConfigError(f"norm must be one of {', '.join(_NORMS)}, got {norm!r}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {dropout}")
        if num_threads is not None and num_threads < 1:
            raise ConfigError(f"num_threads must be at least 1, got {num_threads}")
        check_precision(precision, "")
        self.image_shape = tuple(int(v) for v in image_shape)
        self.channels = channels
        self.norm = norm
        self.dropout = dropout
        self.num_threads = num_threads
        self.precision = precision

    def params(self) -> Mapping[str, ConfigValue]:
        """The architecture (part of the task hash)."""
        c, h, w = self.image_shape
        params: dict[str, ConfigValue] = {
            "image_shape": f"{c}x{h}x{w}",
            "channels": self.channels,
            "norm": self.norm,
            "dropout": self.dropout,
        }
        if self.precision != "fp32":  # absent for fp32: task hashes of earlier runs stay valid
            params["precision"] = self.precision
        return params

    def _module(self) -> SmallCnn:
        module = SmallCnn(
            in_channels=self.image_shape[0],
            channels=self.channels,
            norm=self.norm,
            dropout=self.dropout,
            side=self.image_shape[1],
        )
        return module.to(memory_format=torch.channels_last)  # see SmallCnn.forward

    def _inputs(self, x: npt.NDArray[Any], where: str) -> torch.Tensor:
        if x.ndim == 2 and x.shape[1] == math.prod(self.image_shape):
            x = x.reshape(-1, *self.image_shape)
        if tuple(x.shape[1:]) != self.image_shape:
            raise DataError(
                f"{where}: images must have shape (n, {', '.join(map(str, self.image_shape))}), got {x.shape}"
            )
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))

    def init_model(self, rng: np.random.Generator) -> ModelState:
        """He-uniform convolutions (He et al., ICCV 2015), torch-default head, unit norms; seeded."""
        state = module_state(self._module())
        out: ModelState = {}
        for name, value in state.items():
            if name.startswith("features.") and value.ndim == 4:
                fan_in = int(np.prod(value.shape[1:]))
                bound = math.sqrt(6.0 / fan_in)
                out[name] = rng.uniform(-bound, bound, value.shape).astype(np.float32)
            elif name.startswith("head."):
                bound = 1.0 / math.sqrt(state["head.weight"].shape[1])
                out[name] = rng.uniform(-bound, bound, value.shape).astype(np.float32)
            else:  # conv bias 0, norm weight 1 / bias 0, running mean 0 / var 1, counter 0
                out[name] = value
        return out

    def fit(
        self,
        model: ModelState,
        data: ArrayDataset,
        config: Mapping[str, ConfigValue],
        rng: np.random.Generator,
        *,
        context: FitContext | None = None,
    ) -> FitResult:
        """Minibatch training with (class-weighted) BCE, augmentation, optional FedProx/SCAFFOLD."""
        if len(data) == 0:
            raise DataError("cannot fit on an empty training set")
        use_threads(self.num_threads)
        cfg = {"optimizer": "adam", "lr": 0.001, **config}
        batch_size = read_int(cfg, "batch_size", 64)
        epochs = read_int(cfg, "local_epochs", 1)
        steps = read_int(cfg, "local_steps", 0)
        if batch_size < 1 or epochs < 1 or steps < 0:
            raise ConfigError("config batch_size and local_epochs must be >= 1, local_steps >= 0")
        augment = _read_bool(cfg, "augment", True)
        class_weight = _read_choice(cfg, "class_weight", "balanced", ("balanced", "none"))
        schedule = _read_choice(cfg, "lr_schedule", "constant", ("constant", "cosine"))
        generator = torch.Generator().manual_seed(int(rng.integers(0, 2**63 - 1)))
        precision = resolved_precision(self.precision)  # "auto" decided once per fit
        module = self._module()
        load_state(module, model)
        module.train()
        optimizer = make_optimizer(module.parameters(), cfg)
        target_steps = steps if steps > 0 else epochs * math.ceil(len(data) / batch_size)
        scheduler = (
            torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=target_steps) if schedule == "cosine" else None
        )
        corrections = LocalCorrections(module, cfg, context)
        x = self._inputs(data.x, "training data") if isinstance(data, ArrayDataset) else None  # None: streamed
        y = torch.from_numpy(np.ascontiguousarray(data.y, dtype=np.float32).reshape(-1))
        weights = torch.ones(2)
        if class_weight == "balanced":
            positive = float(y.mean())
            if 0.0 < positive < 1.0:
                weights = torch.tensor([0.5 / (1.0 - positive), 0.5 / positive])

        def batch_loss(index: torch.Tensor) -> torch.Tensor:
            xb = x[index] if x is not None else self._inputs(data.read(index.numpy()), "training data")
            yb = y[index]
            if augment:
                xb = _random_affine(xb, generator)
            with training_arithmetic(precision):
                logits = module(xb, generator)
            return F.binary_cross_entropy_with_logits(logits.float(), yb, weight=weights[yb.long()])

        mean_loss, done = train_steps(
            n=len(data),
            batch_size=batch_size,
            target_steps=target_steps,
            rng=rng,
            optimizer=optimizer,
            corrections=corrections,
            batch_loss=batch_loss,
            after_step=scheduler.step if scheduler else None,
        )
        return FitResult(
            state=module_state(module),
            num_examples=len(data),
            metrics={"train_loss": mean_loss},
            extras=corrections.finish(steps=done),
        )

    def predict(self, model: ModelState, x: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
        """Probability of the positive class for each image (evaluation mode, batches of 1024)."""
        use_threads(self.num_threads)
        module = self._module()
        load_state(module, model)
        module.eval()
        inputs = self._inputs(np.asarray(x), "prediction input")
        with torch.no_grad():
            logits = [module(inputs[i : i + _EVAL_BATCH]) for i in range(0, len(inputs), _EVAL_BATCH)]
        if not logits:
            return np.zeros(0)
        return torch.sigmoid(torch.cat(logits)).double().numpy()

    def evaluate(self, model: ModelState, data: ArrayDataset) -> EvalResult:
        """Log loss, accuracy at 0.5 and ROC AUC on ``data`` (a streamed source is scored a chunk at a time)."""
        if isinstance(data, ArrayDataset):
            scores = self.predict(model, data.x)
        else:
            chunks = [np.arange(i, min(i + _EVAL_BATCH, len(data))) for i in range(0, len(data), _EVAL_BATCH)]
            scores = np.concatenate([self.predict(model, data.read(c)) for c in chunks]) if chunks else np.zeros(0)
        metrics = binary_metrics(np.asarray(data.y), scores)
        return EvalResult(loss=metrics["loss"], num_examples=len(data), metrics=metrics)
