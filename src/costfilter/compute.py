"""Where a run's tensors work: the device (CPU, a CUDA GPU, Apple's MPS) and the precision the
backbone and the trained networks run in.

A run's :class:`Compute` is chosen once (``--device``, ``--precision``, or ``Detector(...,
device=, precision=)``) and never saved: checkpoints stay device-free, and a model fitted on a GPU
opens on a CPU. Decoding and resizing stay on CPU; a batch moves to the device as it enters the
backbone, and maps and scores come back to CPU as float32. Distances to a memory bank are always
float32 (or the bank's own ``search_precision``): the precision named here applies to the networks.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch

from .errors import CostfilterError

#: precisions a run accepts: float32, or autocast to bfloat16 / float16
PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Compute:
    """A device and a precision."""

    device: torch.device
    precision: str = "fp32"

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype, or None for float32."""
        return _DTYPES[self.precision]

    def autocast(self) -> contextlib.AbstractContextManager[object]:
        """Autocast to the precision on the device (nothing for fp32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """float16 gradients underflow without loss scaling (bfloat16's range needs none)."""
        if self.precision == "fp16":
            return torch.amp.GradScaler(self.device.type)
        return None

    def describe(self) -> str:
        name = str(self.device)
        if self.device.type == "cuda":
            name += f" ({torch.cuda.get_device_name(self.device)})"
        return f"{name}, {self.precision}"


def float32(t: torch.Tensor) -> contextlib.AbstractContextManager[object]:
    """No autocast on ``t``'s device within the block: distances and losses, whose differences
    of near-equal numbers (or squares past 65,504) half precision cannot hold. Nothing at all
    where no autocast is on (inference, and the graphs ONNX export traces)."""
    if not torch.is_autocast_enabled(t.device.type):
        return contextlib.nullcontext()
    return torch.autocast(t.device.type, enabled=False)


def resolve(device: str = "cpu", precision: str = "fp32") -> Compute:
    """``auto`` (a CUDA GPU, else MPS, else CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``, and a
    precision from :data:`PRECISIONS`; a device this machine lacks is a one-line error."""
    if precision not in PRECISIONS:
        raise CostfilterError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    name = device.strip().lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if _mps() else "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise CostfilterError(f"--device must be auto, cpu, cuda, cuda:N or mps, got {device!r}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise CostfilterError(f"--device {device}: no CUDA GPU is visible to this torch "
                                  f"({torch.__version__}); use --device cpu")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise CostfilterError(f"--device {device}: this machine has {count} CUDA GPU(s), numbered from 0")
        if precision == "bf16" and not torch.cuda.is_bf16_supported():
            raise CostfilterError(f"--precision bf16: {torch.cuda.get_device_name(dev)} has no bfloat16; use fp16")
    elif dev.type == "mps":
        if not _mps():
            raise CostfilterError(f"--device {device}: Apple's MPS is not available here; use --device cpu")
    elif dev.type != "cpu":
        raise CostfilterError(f"--device must be auto, cpu, cuda, cuda:N or mps, got {device!r}")
    return Compute(dev, precision)


def choose(device: str | None = None, precision: str | None = None) -> Compute:
    """``device`` and ``precision`` as given, each one not given from the default."""
    if device is None and precision is None:
        return default()
    return resolve(device or str(default().device), precision or default().precision)


def _mps() -> bool:
    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


CPU = Compute(torch.device("cpu"))
#: the environment's choice, for processes a command does not parse (benchmark children, workers)
_requested = {"device": os.environ.get("COSTFILTER_DEVICE", "cpu"),
              "precision": os.environ.get("COSTFILTER_PRECISION", "fp32")}
_default: Compute | None = CPU if _requested == {"device": "cpu", "precision": "fp32"} else None


def set_default(compute: Compute) -> None:
    """The compute a :class:`~costfilter.api.Detector` gets when none is given (and what a later
    ``request`` of only one of the two keeps of it)."""
    global _default
    _default = compute
    _requested.update(device=str(compute.device), precision=compute.precision)


def request(device: str | None = None, precision: str | None = None) -> None:
    """Ask for a default device and/or precision, checked when first used (the CLI's
    ``--device`` / ``--precision``: a bad one is then the command's one-line error)."""
    global _default
    if device is not None:
        _requested["device"] = device
    if precision is not None:
        _requested["precision"] = precision
    _default = None


def default() -> Compute:
    """The default compute: CPU, float32, unless set, requested, or named by the environment
    (``COSTFILTER_DEVICE``, ``COSTFILTER_PRECISION``)."""
    global _default
    if _default is None:
        _default = resolve(_requested["device"], _requested["precision"])
    return _default
