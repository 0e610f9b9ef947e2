"""ONNX export of a torch task's model, checked against torch with onnxruntime (the ``clinic`` extra).

The exported graph maps the preprocessed inputs (float32, ``(n, d)``) to the logit; a
clinic can run it without fedcare or torch. Before the file is written into a bundle,
onnxruntime runs it on the given rows and the result must equal the torch model's to
1e-6, so a bundle never ships an export that computes something else.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import numpy.typing as npt

from fedcare.errors import ConfigError
from fedcare.task import Task
from fedcare.types import ModelState

__all__ = ["export_onnx", "onnx_logits", "torch_module"]

TOLERANCE = 1e-6


def _require() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        raise ConfigError("ONNX export needs onnx and onnxruntime: pip install 'fedcare[clinic]'") from None


def torch_module(task: Task, model: ModelState) -> Any:
    """The task's torch module holding ``model`` (eval mode) that outputs the logit, or None."""
    from fedcare.tasks.torch_common import load_state

    build = getattr(task, "_net", None) or getattr(task, "_module", None)
    if build is None:
        return None
    module = build()
    load_state(module, model)
    module.eval()
    return module


def onnx_logits(blob: bytes, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    """Run an exported model with onnxruntime: the logit of each row."""
    _require()
    import onnxruntime

    session = onnxruntime.InferenceSession(blob, providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"x": np.ascontiguousarray(x, dtype=np.float32)})
    return np.asarray(out, dtype=np.float64).reshape(-1)


def export_onnx(task: Task, model: ModelState, sample: npt.NDArray[np.float32]) -> bytes | None:
    """ONNX bytes of the model (None for a task without a torch module), checked on ``sample``.

    Raises
    ------
    ConfigError
        onnx / onnxruntime are missing, or onnxruntime's output differs from torch's by more
        than 1e-6 on ``sample``.
    """
    module = torch_module(task, model)
    if module is None:
        return None
    _require()
    import torch

    inputs = torch.from_numpy(np.ascontiguousarray(sample, dtype=np.float32))
    buf = io.BytesIO()
    torch.onnx.export(
        module,
        (inputs,),
        buf,
        input_names=["x"],
        output_names=["logit"],
        dynamic_axes={"x": {0: "rows"}, "logit": {0: "rows"}},
        dynamo=False,
    )
    blob = buf.getvalue()
    with torch.no_grad():
        want = module(inputs).double().numpy().reshape(-1)
    got = onnx_logits(blob, sample)
    worst = float(np.max(np.abs(got - want))) if len(want) else 0.0
    if worst > TOLERANCE:
        raise ConfigError(f"ONNX export differs from the torch model by {worst:.2e} (> {TOLERANCE:g}): not shipped")
    return blob
