"""Open a model file, whichever kind it is: a checkpoint (``Detector``) or an exported ``.onnx``
file (``OnnxDetector``, run by onnxruntime or OpenVINO). Both answer ``predict``, ``config``, ``thresholds``
and ``state`` alike, so the CLI and the service treat them the same."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def is_onnx(path: Path | str) -> bool:
    return Path(path).suffix.lower() == ".onnx"


def open_model(path: Path | str, *, progress: bool = True, sign_key: str | None = None,
               runtime: str | None = None) -> Any:
    """A :class:`~costfilter.api.Detector` from a checkpoint, or an
    :class:`~costfilter.export.OnnxDetector` from an ``.onnx`` file run by ``runtime``
    (``onnxruntime`` by default, or ``openvino``); with a signing key (given, or
    ``COSTFILTER_SIGN_KEY``) the file must carry a matching signature."""
    if is_onnx(path):
        from .export import OnnxDetector

        return OnnxDetector(path, sign_key=sign_key, runtime=runtime or "onnxruntime")
    if runtime is not None:
        from .errors import CostfilterError

        raise CostfilterError(f"{path}: --runtime {runtime} runs an exported .onnx model; "
                              "export this checkpoint first (costfilter export)")
    from .api import Detector

    return Detector.load(path, progress=progress, sign_key=sign_key)
