"""Run an exported ONNX detector with onnxruntime, with the same results API as ``Detector``."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..api import ImageInput
from ..calibration import Thresholds
from ..config import DetectorConfig
from ..data.imageio import as_rgb, read_image
from ..errors import CheckpointError, CostfilterError
from ..results import Prediction
from ..scoring import typical_patch_score
from ..state import DetectorState
from ..tiling import score_tiled
from .onnx import FORMAT, FORMAT_VERSION, INPUT


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class OnnxDetector:
    """An exported detector: ``OnnxDetector(path).predict(images)`` → :class:`Prediction` list.

    ``config``, ``thresholds`` and ``state`` mirror :class:`~costfilter.api.Detector`'s, read from
    the file's metadata, so the CLI and the service treat both alike.
    """

    def __init__(self, path: Path | str, *, threads: int = 0):
        try:
            import onnxruntime as ort
        except ImportError:
            raise CostfilterError("running an ONNX model needs the export extra: pip install 'costfilter[export]'") from None
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"{self.path}: model file not found")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for a bad file
            raise CheckpointError(f"{self.path}: not a loadable ONNX model ({str(exc).splitlines()[0]})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get("costfilter_format") != FORMAT:
            raise CheckpointError(f"{self.path}: not a costfilter ONNX export (no '{FORMAT}' metadata)")
        if int(meta.get("costfilter_format_version", "0")) > FORMAT_VERSION:
            raise CheckpointError(f"{self.path}: exported by a newer costfilter; upgrade")
        try:
            self.config = DetectorConfig.from_saved(json.loads(meta["config"]))
            self.thresholds: Thresholds | None = Thresholds.from_dict(json.loads(meta["thresholds"]))
            self.state = DetectorState.from_dict({
                "operating_points": json.loads(meta.get("operating_points", "[]")),
                "categories": json.loads(meta.get("categories", "[]")),
                "source_sha256": meta.get("source_sha256") or None,
            }, sha256=_file_sha256(self.path))
        except (KeyError, TypeError, json.JSONDecodeError, CostfilterError) as exc:
            raise CheckpointError(f"{self.path}: costfilter metadata is unreadable ({exc})") from None

    zero_shot = False

    def _run(self, images: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, S, S)`` maps and ``(B,)`` scores of same-size ``(H, W, 3)`` uint8 images."""
        maps, scores = self.session.run(None, {INPUT: np.ascontiguousarray(np.stack(images))})
        return torch.from_numpy(maps), torch.from_numpy(scores)

    def _score(self, images: list[np.ndarray]) -> list[tuple[torch.Tensor, float]]:
        """Map and score of each image: whole, batched by size; or tile by tile."""
        t, bs = self.config.tiling, self.config.batch_size
        if t.size:
            def tiles(x: list[np.ndarray]) -> torch.Tensor:
                return torch.cat([self._run(x[i : i + bs])[0] for i in range(0, len(x), bs)])

            return [score_tiled(im, t.size, t.overlap, self.config.scoring.top_percent, tiles) for im in images]
        out: list[tuple[torch.Tensor, float] | None] = [None] * len(images)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, im in enumerate(images):
            by_shape.setdefault(im.shape, []).append(i)
        for idx in by_shape.values():
            for j in range(0, len(idx), bs):
                chunk = idx[j : j + bs]
                maps, scores = self._run([images[i] for i in chunk])
                for i, m, s in zip(chunk, maps, scores.tolist()):
                    out[i] = (m, s)
        return out  # type: ignore[return-value]

    def predict(self, images: ImageInput | Sequence[ImageInput]) -> list[Prediction]:
        """Score image files or ``(H, W[, 3])`` uint8 arrays, as :meth:`Detector.predict`."""
        items = [images] if isinstance(images, (str, Path, np.ndarray)) else list(images)
        arrays, names = [], []
        for i, x in enumerate(items):
            if isinstance(x, np.ndarray):
                arrays.append(as_rgb(x))
                names.append(f"<array {i}>")
            else:
                arrays.append(read_image(x))
                names.append(str(x))
        assert self.thresholds is not None
        out = []
        for name, image, (m, s) in zip(names, arrays, self._score(arrays)):
            typical = float(typical_patch_score(m[None]))
            out.append(Prediction(name, float(s), self.thresholds.decide(s, typical), m.numpy().astype(np.float32),
                                  tuple(image.shape[:2]), typical))
        return out


def compare_predictions(eager: Sequence[Prediction], exported: Sequence[Prediction]) -> dict[str, float]:
    """How far two runs over the same images differ: the largest score difference relative to the
    score, the largest map difference relative to that map's peak, and the share of equal decisions."""
    score_rel = max(abs(a.score - b.score) / max(abs(a.score), 1e-12) for a, b in zip(eager, exported))
    map_rel = max(float(np.abs(a.anomaly_map - b.anomaly_map).max()) / max(float(np.abs(a.anomaly_map).max()), 1e-12)
                  for a, b in zip(eager, exported))
    agree = float(np.mean([a.decision == b.decision for a, b in zip(eager, exported)]))
    return {"max_score_rel_diff": score_rel, "max_map_rel_diff": map_rel, "decision_agreement": agree,
            "n_images": float(len(eager))}
