"""``Detector`` → ONNX file whose graph takes raw images and returns the anomaly map and score.

The graph holds everything between a decoded image and a decision: the resize to the model's
square input, ImageNet normalisation, the model, map smoothing and the image score. Batch size,
height and width are dynamic (images of one batch share a size). Thresholds, the config and the
source checkpoint's hash travel as ONNX metadata, so the file alone can make decisions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .. import __version__
from ..atomic import atomic_path, check_writable
from ..data.imageio import resize_batch
from ..errors import CostfilterError
from ..integrity import sign, signing_key
from ..names import INT8_CALIBRATIONS, INT8_SCOPES

if TYPE_CHECKING:
    from ..api import Detector

FORMAT = "costfilter-onnx"
#: 2: a SHA-256 over the whole file (``costfilter_sha256``) and an optional signature
FORMAT_VERSION = 2
INPUT = "images"
OUTPUTS = ("anomaly_map", "score")
HASH_KEY = "costfilter_sha256"
SIGNATURE_KEY = "costfilter_signature"
# Stand-ins of the hash's and signature's length: the digest is taken over the file with these in
# place, then they are replaced, so every other byte of the file is covered.
HASH_SLOT = "costfilter-sha256-slot-".ljust(64, "#")
SIGNATURE_SLOT = "costfilter-signature-slot-".ljust(64, "#")


def file_digest(data: bytes, stored_hash: str, stored_signature: str | None) -> str:
    """SHA-256 of an exported file's bytes with its hash (and signature) fields set back to their
    slots; a field that does not occur exactly once makes the digest unmatchable."""
    for value, slot in ((stored_hash, HASH_SLOT), (stored_signature, SIGNATURE_SLOT)):
        if value is None:
            continue
        if not isinstance(value, str) or len(value) != 64 or data.count(value.encode()) != 1:
            return ""
        data = data.replace(value.encode(), slot.encode())
    return hashlib.sha256(data).hexdigest()


def seal(proto: Any, meta: dict[str, str], path: Path, key: bytes | None) -> None:
    """Set ``meta`` as ``proto``'s metadata with a SHA-256 over the whole serialised file and, with
    ``key``, a signature of that hash; write it to ``path`` atomically. ``meta`` gains both."""
    import onnx

    meta[HASH_KEY] = HASH_SLOT
    if key is not None:
        meta[SIGNATURE_KEY] = SIGNATURE_SLOT
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, meta)
    data = proto.SerializeToString()
    if data.count(HASH_SLOT.encode()) != 1 or (key is not None and data.count(SIGNATURE_SLOT.encode()) != 1):
        raise CostfilterError("ONNX export: the integrity fields could not be placed (please report this)")
    digest = hashlib.sha256(data).hexdigest()
    data = data.replace(HASH_SLOT.encode(), digest.encode())
    meta[HASH_KEY] = digest
    if key is not None:
        meta[SIGNATURE_KEY] = sign(digest, key)
        data = data.replace(SIGNATURE_SLOT.encode(), meta[SIGNATURE_KEY].encode())
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


class ExportGraph(nn.Module):
    """``forward((B, H, W, 3) uint8 RGB) → ((B, S, S) anomaly map, (B,) score)``.

    The resize is the eager pipeline's own (:func:`~costfilter.data.imageio.resize_batch`), so both
    see the same pixels; onnxruntime's resampling arithmetic differs from torch's in the last float
    bits, which moves a few pixels that sit on a rounding boundary by one grey level.
    """

    def __init__(self, model: nn.Module, image_size: int):
        super().__init__()
        self.model = model
        self.image_size = image_size

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = resize_batch(images.permute(0, 3, 1, 2).float(), self.image_size)
        return self.model(x / 255.0)


@contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter logs a line per optional op library it skips (torchvision is absent on purpose),
    and torch's own pytree code warns that its ``LeafSpec`` is deprecated: neither is the user's."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.onnx._internal.exporter._registration")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _export(det: Detector, s: int, opset: int) -> Any:
    """The traced ``det`` as an ONNX ``ModelProto`` taking ``(B, H, W, 3)`` uint8 images."""
    graph = ExportGraph(det.model, s).eval()
    # An example unlike any constant in the graph, so no dimension is specialised to it.
    example = torch.zeros(2, s + 7, s + 3, 3, dtype=torch.uint8, device="cpu")
    dims = {INPUT: {0: torch.export.Dim("batch", min=1, max=4096), 1: torch.export.Dim("height", min=2, max=65536),
                    2: torch.export.Dim("width", min=2, max=65536)}}
    with _quiet_exporter(), torch.inference_mode(False), torch.no_grad():
        try:
            program = torch.onnx.export(graph, (example,), dynamo=True, dynamic_shapes=dims, input_names=[INPUT],
                                        output_names=list(OUTPUTS), opset_version=opset, verbose=False)
        except Exception as exc:  # the exporter raises many types; the user needs the one line
            raise CostfilterError(f"ONNX export of {det.config.method!r} failed: {str(exc).splitlines()[0]}") from None
    assert program is not None
    return program.model_proto


def export_onnx(det: Detector, path: Path | str, *, force: bool = False, opset: int = 18,
                sign_key: str | None = None, int8: Sequence[Path] | None = None,
                int8_calibration: str = INT8_CALIBRATIONS[0], int8_scope: str = INT8_SCOPES[0]) -> dict[str, Any]:
    """Write ``det`` as an ONNX file (atomically; refuses to overwrite unless ``force``), with a
    SHA-256 over the whole file and, with a signing key (given or ``COSTFILTER_SIGN_KEY``), a
    signature of it. With ``int8`` (good images to calibrate on), the backbone's convolutions
    (``int8_scope``: "dense" or "all") are quantised to INT8
    (:func:`~costfilter.export.quantize.quantize_backbone`); the bank, the thresholds and
    everything after the backbone stay float32.

    Returns the metadata written into the file (with ``int8``, plus ``int8_skipped``: each
    unreadable calibration image, named with why). Raises :class:`CostfilterError` for a method
    that cannot be exported or when the ``export`` extra is missing.
    """
    try:
        import onnx  # noqa: F401  (sealing needs it: fail before the export's minutes, not after)
    except ImportError:
        raise CostfilterError("ONNX export needs the export extra: pip install 'costfilter[export]'") from None
    if not det.method.exportable:
        raise CostfilterError(f"method {det.config.method!r} cannot be exported: it scores a batch against itself, "
                              "so it has no fixed graph")
    if det.state.learned:
        raise CostfilterError("a model with several learned categories (fit --continue) cannot be exported yet: "
                              "its graph would route each image; export a model per category instead")
    thresholds = det.require_fitted()
    path = Path(path)
    check_writable(path, force)
    s = det.config.features.image_size
    compute = det.compute
    det.to("cpu", "fp32")  # the graph is traced where it will run: CPU, float32
    try:
        proto = _export(det, s, opset)
    finally:
        det.to(str(compute.device), compute.precision)
    quantized: dict[str, Any] | None = None
    skipped: list[str] = []
    if int8 is not None:
        from .quantize import quantize_backbone

        proto, quantized = quantize_backbone(proto, int8, s, int8_calibration, int8_scope)
        skipped = quantized.pop("skipped")  # the caller's to report; file names stay out of the model
    meta = {
        "costfilter_format": FORMAT,
        "costfilter_format_version": str(FORMAT_VERSION),
        "costfilter_version": __version__,
        "config": det.config.to_json(),
        "thresholds": json.dumps(dataclasses.asdict(thresholds)),
        "operating_points": json.dumps([dataclasses.asdict(p) for p in det.state.operating_points]),
        "categories": json.dumps(det.state.categories),
        "source_sha256": str(det.state.sha256 or ""),
        "precision": "int8" if quantized else "fp32",
    }
    if quantized:
        meta["int8"] = json.dumps(quantized)
    kind = f"{det.config.method} detector" + (" (INT8 backbone)" if quantized else "")
    proto.doc_string = (f"costfilter {kind}: {INPUT} (B, H, W, 3) uint8 RGB → "
                        f"anomaly_map (B, {s}, {s}) float32, score (B,) float32")
    seal(proto, meta, path, signing_key(sign_key))
    return dict(meta, int8_skipped=skipped) if int8 is not None else meta
