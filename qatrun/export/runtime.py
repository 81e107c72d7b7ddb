"""Running exported ONNX files in onnxruntime (CPU): batches in, torch tensors out.

The integer-only file may take uint8 pixels (``input_kind="uint8"``); float batches ``x = p / 255`` are
then converted to ``p`` here, so every file runs on the same loader.

Whatever onnxruntime refuses (a file that is no ONNX model, an operator it lacks, an input of another shape
or type) is a :class:`DataError` naming the file, on one line, like the INI's own ONNX errors.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime.capi.onnxruntime_pybind11_state as ort_state
import torch
from torch import Tensor, nn

from qatrun.errors import DataError
from qatrun.export.onnx_graph import session

ORT_ERRORS: tuple[type[Exception], ...] = (
    RuntimeError, ValueError, TypeError,
    *(v for v in vars(ort_state).values() if isinstance(v, type) and issubclass(v, Exception)),
)
"""What onnxruntime raises on a bad file or a bad input: its own classes (they derive from ``Exception``
alone), and the Python ones its bindings raise for a feed of the wrong kind."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _inputs(batch: Any) -> Tensor:
    """The input tensor of a batch: the batch itself, or the first item of an ``(x, labels)`` pair."""
    return batch[0] if isinstance(batch, (tuple, list)) else batch


class OnnxRunner:
    """An onnxruntime session on one file, called like the network: ``runner(x) -> output``.

    Args:
        path: the ONNX file.
        optimize: onnxruntime's graph optimizations (off: the graph runs as written, for exact checks).
        threads: intra-op threads (0: onnxruntime's default).
    """

    def __init__(self, path: str | Path, optimize: bool = False, threads: int = 0) -> None:
        self.path = Path(path)
        try:
            self.session = session(self.path, optimize=optimize, threads=threads)
        except ORT_ERRORS as exc:
            raise DataError(f"cannot read {self.path} as an ONNX model: {_first_line(exc)}") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise DataError(f"{self.path}: the model takes {len(inputs)} inputs; qatrun feeds one (the images)")
        first = inputs[0]
        self.input_shape: list[int | str | None] = list(first.shape)
        self.input_name = first.name
        self.uint8_input = first.type == "tensor(uint8)"

    def feed(self, x: Tensor) -> np.ndarray:
        """The numpy array the file takes for a float batch ``x`` (pixels ``round(255 x)`` for uint8 input)."""
        x = x.detach().cpu()
        if self.uint8_input:
            return torch.round(x.double() * 255).clamp(0, 255).to(torch.uint8).numpy()
        return x.float().numpy()

    def check_input(self, shape: Sequence[int]) -> None:
        """Refuses a batch shape (N, C, H, W) the file does not take (its fixed dimensions differ).

        Raises:
            DataError: naming the file, its input shape and the data's.
        """
        declared = self.input_shape
        fits = len(declared) == len(shape) and all(
            not isinstance(d, int) or d == s for d, s in zip(declared[1:], shape[1:], strict=True))
        if not fits:
            shown = "(" + ", ".join(str(d) if isinstance(d, int) else "N" for d in declared) + ")"
            raise DataError(f"{self.path}: the model's input '{self.input_name}' is {shown}; the data gives "
                            f"images of {tuple(shape[1:])}")

    def run_numpy(self, array: np.ndarray) -> list[np.ndarray]:
        """Every output of the file for one prepared input array.

        Raises:
            DataError: onnxruntime cannot run the file on this input (naming the file).
        """
        try:
            return self.session.run(None, {self.input_name: array})
        except ORT_ERRORS as exc:
            raise DataError(f"{self.path}: onnxruntime cannot run the model on a batch of {array.shape}: "
                            f"{_first_line(exc)}") from None

    def __call__(self, x: Tensor) -> Tensor:
        """The first output for the float batch ``x`` (float32, float64 or int64, as the file computes it)."""
        return torch.from_numpy(self.run_numpy(self.feed(x))[0])


class OnnxModule(nn.Module):
    """An ONNX file as a parameter-free CPU module, so that ``train.test(OnnxModule(path), loader)`` works."""

    def __init__(self, path: str | Path, optimize: bool = False, threads: int = 0) -> None:
        super().__init__()
        self.runner = OnnxRunner(path, optimize, threads)

    def forward(self, x: Tensor) -> Tensor:
        return self.runner(x)


def run_onnx(
    path: str | Path, batches: Iterable[Any], optimize: bool = False, threads: int = 0
) -> Iterator[Tensor]:
    """Runs an ONNX file on each batch (``x`` or ``(x, labels)``), yielding its first output per batch.

    Args:
        path: the ONNX file.
        batches: float inputs ``x`` (N, C, H, W), or pairs whose first item is ``x`` (a loader).
        optimize: onnxruntime's graph optimizations on (faster; the exactness checks run with them off).
        threads: intra-op threads (0: onnxruntime's default).
    """
    runner = OnnxRunner(path, optimize, threads)
    for batch in batches:
        yield runner(_inputs(batch))
