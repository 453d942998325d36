"""Export a fitted detector to ONNX (pre- and post-processing inside the graph) and run the
exported file with onnxruntime. Needs the ``export`` extra: ``pip install 'costfilter[export]'``."""

from __future__ import annotations

from .onnx import ExportGraph, export_onnx
from .runtime import OnnxDetector, compare_predictions

__all__ = ["ExportGraph", "OnnxDetector", "compare_predictions", "export_onnx"]
