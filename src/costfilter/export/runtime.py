"""Run an exported ONNX detector with onnxruntime or OpenVINO, with the same results API as
``Detector``. Both run the bytes that passed the hash and signature checks."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import DetectorConfig
from ..data.imageio import as_rgb, decode, resize_image, shrink
from ..decisions import Thresholds, decided_prediction
from ..errors import CheckpointError, CostfilterError, DataError
from ..integrity import check_signature, parse_version, signing_key
from ..results import ImageInput, Prediction
from ..state import DetectorState
from ..tiling import tiled_scores
from .onnx import FORMAT, FORMAT_VERSION, HASH_KEY, INPUT, SIGNATURE_KEY, file_digest

Infer = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def _onnxruntime(path: Path, data: bytes, threads: int) -> Infer:
    """onnxruntime's CPU session on the checked bytes: ``(B, H, W, 3)`` uint8 → maps, scores."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise CostfilterError("running an ONNX model needs the export extra: pip install 'costfilter[export]'") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for a bad file
        raise CheckpointError(f"{path}: not a loadable ONNX model ({str(exc).splitlines()[0]})") from None
    return lambda x: tuple(session.run(None, {INPUT: x}))  # type: ignore[return-value]


def _openvino(path: Path, data: bytes, threads: int) -> Infer:
    """OpenVINO's CPU plugin on the checked bytes. It runs float32 graphs in bfloat16 by default
    on CPUs that have it (AVX-512 BF16, AMX), which moves scores by several percent: the precision
    is pinned to float32, so its answers are the exported model's (see also ``OnnxDetector._run``)."""
    try:
        import openvino as ov
    except ImportError:
        raise CostfilterError("--runtime openvino needs the openvino extra: pip install 'costfilter[openvino]'") from None
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    try:
        core = ov.Core()
        compiled = core.compile_model(core.read_model(data), "CPU", config)
    except Exception as exc:  # OpenVINO raises RuntimeError subclasses of its own for a bad graph
        raise CheckpointError(f"{path}: OpenVINO cannot load this model ({str(exc).splitlines()[0]})") from None
    maps_out, scores_out = compiled.outputs[0], compiled.outputs[1]

    def infer(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        result = compiled([x])
        return result[maps_out], result[scores_out]

    return infer


#: runtime name → session builder; the CLI's ``--runtime`` choices
RUNTIMES: dict[str, Callable[[Path, bytes, int], Infer]] = {"onnxruntime": _onnxruntime, "openvino": _openvino}


class OnnxDetector:
    """An exported detector: ``OnnxDetector(path).predict(images)`` → :class:`Prediction` list.

    ``config``, ``thresholds`` and ``state`` mirror :class:`~costfilter.api.Detector`'s, read from
    the file's metadata, so the CLI and the service treat both alike. ``runtime``: ``onnxruntime``
    (default) or ``openvino`` (the ``openvino`` extra; Intel's CPU runtime, kept at float32).
    """

    def __init__(self, path: Path | str, *, threads: int = 0, sign_key: str | None = None,
                 runtime: str = "onnxruntime"):
        if runtime not in RUNTIMES:
            raise CostfilterError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
        try:
            import onnx
        except ImportError:
            raise CostfilterError("running an ONNX model needs the export extra: pip install 'costfilter[export]'") from None
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"{self.path}: model file not found")
        data = self.path.read_bytes()  # read once: what is checked is what runs
        try:
            proto = onnx.load_from_string(data)
        except Exception as exc:  # protobuf's decode errors have several types
            raise CheckpointError(f"{self.path}: not a loadable ONNX model ({str(exc).splitlines()[0]})") from None
        meta = {p.key: p.value for p in proto.metadata_props if isinstance(p.key, str) and isinstance(p.value, str)}
        if meta.get("costfilter_format") != FORMAT:
            raise CheckpointError(f"{self.path}: not a costfilter ONNX export (no '{FORMAT}' metadata)")
        version = parse_version(self.path, meta.get("costfilter_format_version"))
        if version > FORMAT_VERSION:
            raise CheckpointError(f"{self.path}: exported by a newer costfilter; upgrade")
        signature = meta.get(SIGNATURE_KEY)
        # A file that carries a hash is checked whatever its version says: a flipped version
        # byte must not switch the check off. Only exports older than the hash have none.
        if version >= 2 or HASH_KEY in meta:
            digest = meta.get(HASH_KEY, "")
            if len(digest) != 64 or file_digest(data, digest, signature) != digest:
                raise CheckpointError(f"{self.path}: content hash mismatch: the file is corrupt or was modified")
        else:
            digest = hashlib.sha256(data).hexdigest()
        key = signing_key(sign_key)
        status = check_signature(self.path, digest, signature, key)
        try:
            self.config = DetectorConfig.from_saved(json.loads(meta["config"]))
            self.config.validate()
            self.thresholds: Thresholds | None = Thresholds.from_dict(json.loads(meta["thresholds"]))
            self.state = DetectorState.from_dict({
                "operating_points": json.loads(meta.get("operating_points", "[]")),
                "categories": json.loads(meta.get("categories", "[]")),
                "source_sha256": meta.get("source_sha256") or None,
            }, sha256=hashlib.sha256(data).hexdigest())
        except (KeyError, TypeError, ValueError, CostfilterError) as exc:
            raise CheckpointError(f"{self.path}: costfilter metadata is unreadable ({str(exc).splitlines()[0]})") from None
        self.state.signature = status
        #: "fp32", or "int8" for an export whose backbone was quantised (``export --int8``)
        self.precision = meta.get("precision", "fp32")
        _check_metadata(self.path, self.config)
        self.runtime = runtime
        self._infer = RUNTIMES[runtime](self.path, data, threads)

    zero_shot = False

    def _run(self, images: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, S, S)`` maps and ``(B,)`` scores of same-size ``(H, W, 3)`` uint8 images."""
        if self.runtime == "openvino":
            # OpenVINO's antialiased Resize differs from ONNX's (scores move ~0.5 % on shrunk
            # images), so images reach it at the model's size, resized as the eager pipeline
            # resizes them; the graph's own Resize is then the identity.
            size = self.config.features.image_size
            images = [resize_image(x, size) for x in images]
        maps, scores = self._infer(np.ascontiguousarray(np.stack(images)))
        return torch.from_numpy(np.asarray(maps)), torch.from_numpy(np.asarray(scores))

    def _score(self, images: list[np.ndarray]) -> list[tuple[torch.Tensor, float]]:
        """Map and score of each whole image, batched by size."""
        bs = self.config.batch_size
        out: list[tuple[torch.Tensor, float] | None] = [None] * len(images)
        # OpenVINO is handed every image at the model's size (see _run), so they batch together.
        resized = self.runtime == "openvino"
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, im in enumerate(images):
            by_shape.setdefault((0,) if resized else im.shape, []).append(i)
        for idx in by_shape.values():
            for j in range(0, len(idx), bs):
                chunk = idx[j : j + bs]
                maps, scores = self._run([images[i] for i in chunk])
                for i, m, s in zip(chunk, maps, scores.tolist()):
                    out[i] = (m, s)
        return out  # type: ignore[return-value]

    def _tiles(self, tiles: list[np.ndarray]) -> torch.Tensor:
        """``(n, S, S)`` maps of raw tiles, ``batch_size`` at a time."""
        bs = self.config.batch_size
        return torch.cat([self._run(tiles[i : i + bs])[0] for i in range(0, len(tiles), bs)])

    def thresholds_for(self, category: str | None) -> Thresholds:
        """The model's thresholds (an exported model has one category)."""
        if self.thresholds is None:
            raise CostfilterError(f"{self.path}: the exported model carries no thresholds")
        return self.thresholds

    def predict(self, images: ImageInput | Sequence[ImageInput], *,
                errors: list[tuple[str, str]] | None = None) -> list[Prediction]:
        """Score image files or ``(H, W[, 3])`` uint8 arrays, as :meth:`Detector.predict`
        (``errors``: unreadable files are appended to it and the rest scored)."""
        items = [images] if isinstance(images, (str, Path, np.ndarray)) else list(images)
        assert self.thresholds is not None
        t = self.thresholds
        if self.config.tiling.size:
            return [decided_prediction(name, amap.shape, amap, s, t)
                    for _, name, amap, s in tiled_scores(items, self.config.tiling, self.config.scoring.top_percent,
                                                         self.config.batch_size, lambda _, x: self._tiles(x), errors)]
        # Huge images are box-reduced as the eager pipeline reduces them.
        size = self.config.features.image_size
        arrays, names, sources = [], [], []
        for i, x in enumerate(items):
            if isinstance(x, np.ndarray):
                image = as_rgb(x)
                sources.append(image.shape[:2])
                arrays.append(shrink(image, size))
                names.append(f"<array {i}>")
            else:
                try:
                    image, source = decode(Path(x), size=size)
                except DataError as exc:
                    if errors is None:
                        raise
                    errors.append((str(x), str(exc)))
                    continue
                arrays.append(image)
                sources.append(source)
                names.append(str(x))
        return [decided_prediction(name, source, m, s, t)
                for name, source, (m, s) in zip(names, sources, self._score(arrays))]


def _check_metadata(path: Path, config: DetectorConfig) -> None:
    """The metadata must describe a model this graph can be: an exportable method (validated
    config: image size a multiple of 32, consistent tiling)."""
    from ..methods import get_method

    try:
        exportable = get_method(config.method).exportable
    except CostfilterError:
        exportable = False
    if not exportable:
        raise CheckpointError(f"{path}: metadata names method {config.method!r}, which has no exported form")


def compare_predictions(eager: Sequence[Prediction], exported: Sequence[Prediction]) -> dict[str, float]:
    """How far two runs over the same images differ: the largest score difference relative to the
    score, the largest map difference relative to that map's peak, and the share of equal decisions."""
    score_rel = max(abs(a.score - b.score) / max(abs(a.score), 1e-12) for a, b in zip(eager, exported))
    map_rel = max(float(np.abs(a.anomaly_map - b.anomaly_map).max()) / max(float(np.abs(a.anomaly_map).max()), 1e-12)
                  for a, b in zip(eager, exported))
    agree = float(np.mean([a.decision == b.decision for a, b in zip(eager, exported)]))
    return {"max_score_rel_diff": score_rel, "max_map_rel_diff": map_rel, "decision_agreement": agree,
            "n_images": float(len(eager))}
