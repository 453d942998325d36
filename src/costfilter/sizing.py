"""``--image-size auto``: the input size chosen by validation, within a speed rule.

Small defects vanish at 256 px, while a larger input costs time and can lose elsewhere (on the
shared sets, 384 px helps welding and costs magnetic_tile pixel AP). So the size is chosen on the
user's own good images, never on test labels:

1. A seeded fifth of the good training images is held out.
2. The validation set is each held-out image as it is and once with a synthetic anomaly (the
   trained methods' synthesizer), on one :data:`CANVAS`-pixel canvas so every size sees the same
   pictures; pixel metrics compare at :data:`EVAL_SIZE`.
3. Smallest size first, a model is fitted on the other good images and scores the validation
   set, timed. A size whose scoring (resize and model, from decoded images) runs below
   :data:`SPEED_FLOOR` × the backbone alone at 256 px (same images, same run) is out, with every
   larger one. The smallest candidate is always kept.
4. The allowed size with the best mean of I-AUROC, P-AP and AUPRO wins; a tie goes to the smaller.

The model is then fitted on all the good images at that size, and the trials (speed and
validation of each size) are kept in its checkpoint. It costs one fit per size tried, plus one.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from .data import Sample, read_image, split_of
from .data.imageio import resize_image, to_tensor
from .decisions import holdout_split
from .errors import CostfilterError
from .evaluation import map_at
from .metrics import image_metrics
from .metrics.streaming import PixelMetrics
from .speed import backbone_images_per_s
from .synth.batch import make_synthesizer
from .tables import format_table

if TYPE_CHECKING:
    from .api import Detector
    from .config import DetectorConfig

#: sizes tried, smallest first (multiples of 32; a ViT skips those its patch size does not divide)
CANDIDATES = (256, 320, 384, 448, 512)
#: a size is allowed while its scoring runs at ≥ this × the 256-px backbone alone
SPEED_FLOOR = 0.4
#: share of the good training images held out to validate on
HOLDOUT = 0.2
CANVAS = 512
EVAL_SIZE = 256
REFERENCE_SIZE = 256


@dataclasses.dataclass
class SizeTrial:
    """One size tried: its scoring speed on the validation images, whether the speed rule allows
    it, and its validation metrics (synthetic anomalies on held-out good images)."""

    size: int
    images_per_s: float
    allowed: bool
    image_auroc: float
    pixel_ap: float
    aupro: float

    @property
    def score(self) -> float:
        """What the choice maximises: the mean of I-AUROC, P-AP and AUPRO."""
        return float(np.mean([self.image_auroc, self.pixel_ap, self.aupro]))


@dataclasses.dataclass
class SizeChoice:
    """The size chosen, the yardstick (backbone alone at 256 px, images/s), the rule, the number
    of held-out images, and every size tried."""

    size: int
    reference_images_per_s: float
    floor: float
    held_out: int
    trials: list[SizeTrial]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SizeChoice:
        fields = {f.name for f in dataclasses.fields(SizeTrial)}
        trials = [SizeTrial(**{k: v for k, v in t.items() if k in fields}) for t in data["trials"]]
        return cls(data["size"], data["reference_images_per_s"], data["floor"], data["held_out"], trials)

    def table(self) -> str:
        """Each size tried: speed against the rule, validation metrics, the one chosen."""
        limit = self.floor * self.reference_images_per_s
        rows = [[t.size, f"{t.images_per_s:.1f}", "yes" if t.allowed else f"no (< {limit:.1f})",
                 f"{t.image_auroc:.3f}", f"{t.pixel_ap:.3f}", f"{t.aupro:.3f}", f"{t.score:.3f}",
                 "chosen" if t.size == self.size else ""] for t in self.trials]
        return format_table(["size", "images/s", "allowed", "I-AUROC", "P-AP", "AUPRO", "mean", ""], rows)


def validation_set(paths: Sequence[Path], config: DetectorConfig, seed: int
                   ) -> tuple[list[np.ndarray], np.ndarray, list[int]]:
    """``(CANVAS, CANVAS, 3)`` uint8 images (each held-out image, then it with a synthetic
    anomaly where one could be drawn), their ``(N, EVAL_SIZE, EVAL_SIZE)`` bool masks and 0/1 labels."""
    goods = [resize_image(read_image(p), CANVAS) for p in paths]
    synth = make_synthesizer(config.synthesis, np.stack(goods), normal_fraction=0.0)
    rng = np.random.default_rng(seed)
    images, masks, labels = [], [], []
    empty = np.zeros((EVAL_SIZE, EVAL_SIZE), dtype=bool)
    for good in goods:
        images.append(good)
        masks.append(empty)
        labels.append(0)
        bad, mask = synth(rng, good)
        small = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((EVAL_SIZE, EVAL_SIZE), Image.NEAREST)) > 0
        if small.any():
            images.append(bad)
            masks.append(small)
            labels.append(1)
    return images, np.stack(masks), labels


def validate(det: Detector, images: list[np.ndarray], masks: np.ndarray, labels: list[int]
             ) -> tuple[dict[str, float], float]:
    """``det``'s I-AUROC, P-AP and AUPRO on the validation set, and its scoring images/s there
    (after one warm-up batch)."""
    list(det.scored(images[: det.config.batch_size], "warm-up"))
    t0 = time.perf_counter()
    maps, scores = [], []
    for _, _, batch_maps, batch_scores in det.scored(images, "validate"):
        maps += [map_at(m, EVAL_SIZE) for m in batch_maps]
        scores += batch_scores
    rate = len(images) / (time.perf_counter() - t0)
    pixels = PixelMetrics()
    pixels.add(np.stack(maps), masks)
    px = pixels.result()
    return {"image_auroc": image_metrics(scores, labels)["image_auroc"], "pixel_ap": px["pixel_ap"],
            "aupro": px["aupro"]}, rate


def choose_image_size(samples: Sequence[Sample], config: DetectorConfig, *, candidates: Sequence[int] | None = None,
                      floor: float | None = None, progress: bool = True) -> SizeChoice:
    """Try ``candidates`` (default :data:`CANDIDATES`; see the module's rule, ``floor`` default
    :data:`SPEED_FLOOR`) on the good ``train`` images of ``samples``."""
    from .api import Detector

    candidates = CANDIDATES if candidates is None else candidates
    floor = SPEED_FLOOR if floor is None else floor
    train = split_of(list(samples), "train")
    if len(train) < 5:
        raise CostfilterError(f"--image-size auto holds out a fifth of the good training images to validate on; "
                              f"it needs at least 5, got {len(train)}")
    if config.tiling.size:
        raise CostfilterError("--image-size auto chooses a whole-image input size; with --tile the tile size is the input")
    fit_idx, val_idx = holdout_split(len(train), HOLDOUT, config.seed)
    images, masks, labels = validation_set([train[i].path for i in val_idx], config, config.seed)
    if sum(labels) == 0:
        raise CostfilterError("--image-size auto: no synthetic anomaly could be drawn on the held-out images")
    fit = [train[i] for i in fit_idx]
    trials: list[SizeTrial] = []
    reference = None
    for size in sorted(candidates):
        cfg = copy.deepcopy(config)
        cfg.features.image_size = size
        try:
            cfg.validate()
        except CostfilterError:
            continue  # not a size this backbone takes (a ViT's patch size does not divide it)
        det = Detector(cfg, progress=progress).fit(fit)
        if reference is None:
            batch = to_tensor([resize_image(x, REFERENCE_SIZE) for x in images])
            reference = backbone_images_per_s(det, batch, cfg.batch_size)
        metrics, rate = validate(det, images, masks, labels)
        allowed = not trials or rate >= floor * reference
        trials.append(SizeTrial(size, rate, allowed, **metrics))
        if not allowed:
            break  # larger sizes are slower still
    if not trials or reference is None:
        raise CostfilterError(f"--image-size auto: none of the sizes {list(candidates)} suits this backbone")
    best = max((t for t in trials if t.allowed), key=lambda t: (t.score, -t.size))
    return SizeChoice(best.size, reference, floor, len(val_idx), trials)


def fit_auto_size(config: DetectorConfig, samples: Sequence[Sample], *, candidates: Sequence[int] | None = None,
                  floor: float | None = None, progress: bool = True) -> Detector:
    """Choose the input size (:func:`choose_image_size`), then fit on all of ``samples`` at it;
    the choice is kept in the detector's state (and so in its checkpoint)."""
    from .api import Detector

    choice = choose_image_size(samples, config, candidates=candidates, floor=floor, progress=progress)
    cfg = copy.deepcopy(config)
    cfg.features.image_size = choice.size
    det = Detector(cfg, progress=progress).fit(list(samples))
    det.state.image_size_choice = choice.to_dict()
    return det
