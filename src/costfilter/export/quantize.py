"""Post-training INT8 quantisation of an export's backbone with onnxruntime (static, QDQ).

Only the backbone's convolutions are quantised: they hold nearly all of the arithmetic, while the
memory bank's distances, the cost filter and the map smoothing decide scores directly and stay in
float32. Activation ranges are calibrated on good images only (never on defects or test labels);
the memory bank and the thresholds are the float32 model's, so whether INT8 keeps its decisions is
a measurement (``costfilter export --int8 ... --check``, ``benchmarks/int8.py``), not an assumption.
"""

from __future__ import annotations

import ast
import contextlib
import io
import logging
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..data.imageio import decode, resize_image
from ..errors import CostfilterError, DataError
from ..names import INT8_CALIBRATIONS, INT8_SCOPES

#: calibration methods offered: onnxruntime's 99.999th percentile of every activation, or its min/max
METHODS = INT8_CALIBRATIONS
#: which backbone convolutions become INT8: all of them, or the dense ones only (``group == 1``).
#: Depthwise convolutions have one filter per channel and a handful of weights each, so one
#: activation range per tensor fits them worst. The defaults (dense, percentile) are the variant
#: that moved good training images' scores least on all three masked sets (benchmarks/int8.py).
SCOPES = INT8_SCOPES
#: images calibrated on at most (each is one pass of the whole graph, its activations all kept)
MAX_IMAGES = 64
# The torch exporter records each node's module path; a backbone's modules sit under a scope
# whose last name is "backbone" (model.features.backbone, model.base.features.backbone, ...).
_SCOPES = "pkg.torch.onnx.name_scopes"


def backbone_convs(proto: Any, scope: str = "all") -> list[str]:
    """Names of the Conv nodes of ``proto`` (an exported ``ModelProto``) that belong to the backbone
    (``scope`` "dense": only those with one group)."""
    names = []
    for node in proto.graph.node:
        if node.op_type != "Conv":
            continue
        if scope == "dense" and next((a.i for a in node.attribute if a.name == "group"), 1) != 1:
            continue
        meta = {p.key: p.value for p in node.metadata_props}
        try:
            scopes = ast.literal_eval(meta.get(_SCOPES, "[]"))
        except (ValueError, SyntaxError):
            continue
        if any(str(s).rsplit(".", 1)[-1] == "backbone" for s in scopes):
            names.append(node.name)
    return names


def spread(files: Sequence[Path], n: int = MAX_IMAGES) -> list[Path]:
    """At most ``n`` of ``files``, evenly spaced over their sorted order (so not the first ``n``
    of one capture session)."""
    files = sorted(files)
    if len(files) <= n:
        return files
    return [files[round(i * (len(files) - 1) / (n - 1))] for i in range(n)]


def _batches(files: Sequence[Path], size: int, name: str, skipped: list[str]) -> Iterator[dict[str, np.ndarray]]:
    """``{name: (1, S, S, 3) uint8}`` per readable file, decoded and resized as at scoring time;
    each unreadable one is named in ``skipped`` with why."""
    for path in files:
        try:
            image, _ = decode(Path(path), size=size)
        except DataError as exc:
            skipped.append(str(exc))  # the others still calibrate; the count is checked by the caller
            continue
        yield {name: resize_image(image, size)[None]}


class _NoPreprocessAdvice(logging.Filter):
    """onnxruntime advises, on the root logger, a shape-inference pass that our graphs (dynamic
    batch and image size, shapes already inferred by the exporter) do not need."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing" not in record.getMessage()


def quantize_backbone(proto: Any, files: Sequence[Path], size: int, method: str = INT8_CALIBRATIONS[0],
                      scope: str = INT8_SCOPES[0]) -> tuple[Any, dict[str, Any]]:
    """``proto`` with its backbone's Conv nodes (``scope``: see :data:`SCOPES`) quantised to INT8
    (weights per channel, signed; activations unsigned), calibrated on the good images ``files``
    at the model's ``size``.

    Returns the new ``ModelProto`` and what was done (for the file's metadata). Raises
    :class:`CostfilterError` when nothing can be quantised or no calibration image is readable.
    """
    if method not in METHODS:
        raise CostfilterError(f"unknown INT8 calibration {method!r}; choose one of {', '.join(METHODS)}")
    if scope not in SCOPES:
        raise CostfilterError(f"unknown INT8 scope {scope!r}; choose one of {', '.join(SCOPES)}")
    try:
        import onnx
        from onnxruntime.quantization import (
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )
    except ImportError:
        raise CostfilterError("INT8 export needs the export extra: pip install 'costfilter[export]'") from None
    nodes = backbone_convs(proto, scope)
    if not nodes:
        raise CostfilterError("INT8: the exported graph has no backbone convolutions to quantise")
    chosen = spread(files)
    if not chosen:
        raise CostfilterError("INT8 needs good images to calibrate on (--int8 FOLDER): none were given")
    skipped: list[str] = []
    batches = list(_batches(chosen, size, proto.graph.input[0].name, skipped))  # 64 images at 256 px: 12 MB
    if not batches:
        raise CostfilterError(f"INT8: none of the {len(chosen)} calibration images could be read "
                              f"({skipped[0]}{' …' if len(skipped) > 1 else ''})")

    class Reader(CalibrationDataReader):  # type: ignore[misc]  (onnxruntime's class is untyped)
        def __init__(self) -> None:
            self.batches = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    calibration = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile}[method]
    with tempfile.TemporaryDirectory(prefix="costfilter-int8-") as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(proto, src)
        advice = _NoPreprocessAdvice()
        logging.getLogger().addFilter(advice)
        # The percentile calibrator prints its progress to stdout, which is the CLI's answer.
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                                op_types_to_quantize=["Conv"], nodes_to_quantize=nodes,
                                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                calibrate_method=calibration, calibration_providers=["CPUExecutionProvider"])
        finally:
            logging.getLogger().removeFilter(advice)
        quantized = onnx.load(dst)
    return quantized, {"calibration": method, "scope": scope, "calibration_images": len(batches),
                       "quantized_convs": len(nodes), "skipped": skipped}
