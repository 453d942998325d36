"""Typed configuration, saved inside every checkpoint so ``predict`` needs nothing else."""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import CostfilterError


@dataclass(slots=True)
class FeatureConfig:
    """How images become patch features."""

    backbone: str = "efficientnet_lite0"
    #: EfficientNet stages to tap (3 → stride 8, 5 → stride 16 for the Lite family).
    layers: tuple[int, ...] = (3, 5)
    #: Images are resized (no crop) to ``image_size`` × ``image_size``; a multiple of 32.
    image_size: int = 256
    #: Side of the local average pooling that gives each patch its neighbourhood context.
    neighbourhood: int = 3
    #: Count the zero padding in that average at the image border, as PatchCore does: border
    #: patches are damped alike in fit and test images (measured in the README's masked table).
    pad_neighbourhood: bool = True
    #: Optional local weights file for backbones that would otherwise download.
    weights: str | None = None


@dataclass(slots=True)
class MemoryBankConfig:
    """PatchCore-style memory bank."""

    #: Rows in the bank (every patch when there are fewer). Scoring cost grows with the bank's
    #: size, not its ratio; the default is the speed rule's answer: the largest bank whose
    #: scoring stays ≥ 0.75× the backbone alone at batch 32 on this workplace's 2-core CPU (a
    #: speed rule, no labels; benchmarks/memory_bank.py, docs/benchmark.md).
    bank_size: int = 4096
    #: PatchCore-style alternative: keep this fraction of the training patches (0 < ratio ≤ 1),
    #: at least ``min_bank_size`` rows, instead of ``bank_size``. None = use ``bank_size``.
    coreset_ratio: float | None = None
    #: Floor of the bank when ``coreset_ratio`` sets its size.
    min_bank_size: int = 1000
    #: ``greedy`` (k-centre coreset) or ``random`` subsampling.
    sampler: str = "greedy"
    #: Dimension of the random projection the greedy selection measures distances in (0 = exact).
    projection_dim: int = 128
    #: Multiply-adds the greedy selection may spend (bank size × candidates × projection dim).
    #: When all patches would cost more, greedy runs on a seeded random pre-subsample that fits.
    #: 6e10 ≈ 10 s here (a 4,096-row bank from 114 k candidates), which keeps a whole fit within
    #: 3× the backbone's time over the same images on ELPV. 0 = no limit.
    greedy_budget: float = 6e10
    #: Explicit pre-subsample: this many times the bank size (overrides ``greedy_budget``; 0 = off).
    presample_factor: float = 0.0
    #: Keep candidate patches in float16 while the coreset is selected: half the memory of the
    #: largest buffer of a fit. Bank rows keep float16 precision (~3 significant digits);
    #: distances are always computed in float32.
    half_precision: bool = True
    #: ``torch`` chunked search, or ``faiss`` (exact flat index) when installed.
    search: str = "torch"
    #: Precision of the torch search: ``float32`` (exact), ``bfloat16`` (~4× faster on CPUs with
    #: bfloat16 matrix units; distances within 0.7 % at the 99th percentile), or ``auto``:
    #: bfloat16 for banks of 2,048 rows and more on CPUs where it is fast, else float32.
    search_precision: str = "auto"


@dataclass(slots=True)
class ScoringConfig:
    """How patch distances become a smoothed map and an image score."""

    #: Gaussian smoothing of the upsampled map, in pixels at ``image_size``.
    sigma: float = 4.0
    #: Image score = mean of the top ``top_percent`` % of map pixels.
    top_percent: float = 1.0
    #: Memory bank only: ``top_percent`` (above), or ``reweighted_max``: PatchCore's score, the
    #: largest patch distance weighted by how isolated its nearest bank row is.
    image_score: str = "top_percent"
    #: Bank neighbours PatchCore's re-weighting looks at (anomalib's default).
    reweight_neighbours: int = 9


@dataclass(slots=True)
class CalibrationConfig:
    """Thresholds from normal images only."""

    #: Fraction of the normal training images held out of the bank (and of training) to
    #: calibrate thresholds. None = the method's default: 0 for the memory bank, whose every fit
    #: image goes into the bank and is scored leave-one-image-out (against the bank without its
    #: own rows); 0.1 for trained methods, which validate on the held-out images. A value > 0 is
    #: a strict holdout for any method.
    holdout_fraction: float | None = None
    #: Target rate of good parts rejected (image threshold), measured on the calibration images.
    false_reject_rate: float = 0.01
    #: If set, a review band: scores above this rate's threshold but below the reject threshold
    #: are ``review`` (must be larger than ``false_reject_rate``).
    review_false_reject_rate: float | None = None
    #: Target rate of good images that show any pixel above the pixel threshold.
    pixel_false_alarm_rate: float = 0.01
    #: An image whose typical patch (median of its map) is farther from normal than this factor
    #: times the largest such value among the calibration good images is ``unknown``. 0 = off.
    ood_factor: float = 2.0
    #: Defect regions smaller than this many pixels (at the image's own size) are not reported.
    min_region_area: int = 16


@dataclass(slots=True)
class ScreeningConfig:
    """Finding defective images among the good training images (:mod:`costfilter.screening`)."""

    #: What to do with training images whose leave-one-out score is an outlier: 0 = list them
    #: only; "auto" = leave the flagged ones out of the fit; a fraction f < 0.5 = leave out the
    #: f of images that score highest. Flagged images are always listed.
    contamination: str | float = 0.0
    #: Robust z-score above which an image is flagged (median + k·1.4826·MAD; 3.5 is the
    #: usual outlier cut for the modified z-score).
    outlier_k: float = 3.5


@dataclass(slots=True)
class TrainingConfig:
    """One training loop's settings (DFM, CostFilter-AD): how long, how, how often to validate."""

    #: Training steps; ``time_budget_s`` > 0 stops earlier by wall-clock time.
    steps: int = 300
    time_budget_s: float = 0.0
    batch_size: int = 8
    lr: float = 1e-3
    #: Validate every this many steps (and at the end); the best validated weights are kept.
    val_every: int = 50
    #: Synthetic validation samples built from the held-out normal images.
    n_val: int = 48


@dataclass(slots=True)
class SynthesisConfig:
    """Synthetic anomalies for the trained methods."""

    #: Folder of texture images (e.g. DTD) for synthetic anomalies; ``None`` = offline textures.
    texture_dir: str | None = None
    #: For objects on a plain background: restrict anomalies to pixels differing from the border
    #: colour by more than this (0–255); ``None`` = anywhere.
    foreground_threshold: float | None = None
    #: Share of anomalies filled from a grid-shuffled copy of the image itself (the reference's
    #: self-augmentation), the rest from the texture source.
    self_fill: float = 0.5
    #: Solarise, posterise or invert the fill at random, as the reference augments its textures.
    photometric: bool = True


@dataclass(slots=True)
class CostFilterConfig:
    """CostFilter-AD on top of a base detector (``method: costfilter``)."""

    #: ``memory`` (embedding base: memory bank + nearest normal templates) or ``reconstruction``.
    base: str = "memory"
    #: Templates per input (embedding base): the nearest by global descriptor among a pool of at
    #: most ``max_templates`` fit images (a seeded random pool when there are more). One, as the
    #: reference's reconstruction base has: the volume's cost grows with it (speed rule below).
    n_templates: int = 1
    max_templates: int = 256
    #: Cost volume layout: ``template`` (the reference's: the K smallest costs in template-index
    #: order, K as channels, layer groups as depth) or ``sorted`` (ascending costs, K as depth).
    volume: str = "template"
    #: Matching costs kept per location (the reference keeps 768 of 784). K, the width and the
    #: templates above are a speed rule's answer: the largest that keep test throughput ≥ 0.4×
    #: the backbone alone here (the benchmark's ablation reports larger ones).
    top_k: int = 16
    #: Widths of the 3-D U-Net's encoder scales (one spatial pooling between consecutive scales):
    #: the reference's pattern b, 2b, 2b, 4b, with b = 8.
    widths: tuple[int, ...] = (8, 16, 16, 32)
    #: Number of classes for the class-aware adaptor (set by ``fit`` from the categories).
    n_classes: int = 1
    #: Which map λ weighs in the final map: ``filter`` (the reference's ``λ·filter + (1 − λ)·base``)
    #: or ``base`` (this project's first version).
    blend_on: str = "filter"
    #: λ; ``None`` = chosen on validation (``0`` = the base alone, unless the filter's gain there
    #: is larger than its bootstrap noise), among the grid's values up to ``max_blend``.
    blend: float | None = None
    #: The largest λ validation may choose: 0.1, the top of the reference's hand-set values
    #: (0.017–0.1): the filter corrects the base, it does not replace it. Synthetic anomalies favour
    #: the filter more than real defects do, so a larger λ is not left to them.
    max_blend: float = 0.1
    #: Train the filter on maps of test-like scale: each training image scored against a bank
    #: without its own patches (memory base), or a reconstructor trained on the other half of the
    #: fit images (reconstruction base).
    cross_fit: bool = True
    #: Synthetic training samples prepared once and reused each epoch (the backbone and base are
    #: frozen, so their work is done once).
    pool_size: int = 512
    #: Reconstruction base training steps.
    recon_steps: int = 300
    #: A CostFilter-AD checkpoint whose filter weights start the training (transfer from other
    #: data; K, widths and backbone must match; its class head is kept only for equal class counts).
    init_filter: str | None = None
    training: TrainingConfig = field(default_factory=lambda: TrainingConfig(
        steps=3000, batch_size=12, lr=1e-4, val_every=150, n_val=128))


@dataclass(slots=True)
class DFMConfig:
    """Differentiable feature matching (``method: dfm``) over the memory bank."""

    #: Initial soft-min temperature τ (learned); the hard minimum is τ → 0.
    temperature: float = 1.0
    #: Soft-min runs over each patch's nearest ``candidates`` bank rows.
    candidates: int = 16
    #: Train a 1 × 1 adapter on the frozen features (identity at start).
    adapter: bool = True
    #: End to end: the backbone stages that are tapped train too (the bank is re-embedded at
    #: every validation, so it follows the features); False: frozen backbone.
    train_backbone: bool = False
    #: The backbone's learning rate, as a fraction of the adapter's.
    backbone_lr: float = 0.1
    #: Normal images per category kept in the model, replayed when a category is added later
    #: (``fit --continue``); 0 keeps none.
    replay_images: int = 8
    #: Share of each continual-learning batch drawn from the replayed images (0: no replay).
    replay_share: float = 0.25
    training: TrainingConfig = field(default_factory=lambda: TrainingConfig(steps=200, val_every=25))


@dataclass(slots=True)
class ZeroShotConfig:
    """Zero-shot batch mutual scoring (``method: zeroshot``): no fit, images score each other."""

    #: Patch score = mean of this smallest fraction of the distances to the other images.
    fraction: float = 0.3
    #: Images scored together (the batch is the reference set); batches are split evenly.
    batch_size: int = 32
    #: Neighbourhood sizes patches are aggregated over, each scored, scores averaged (MuSc's r).
    degrees: tuple[int, ...] = (1, 3, 5)
    #: Score each tapped layer alone (LayerNorm'd) and average (MuSc); False: concatenated layers.
    per_layer: bool = True
    #: With per_layer: score a coarser layer on its own grid, upsample the scores (2× faster).
    native_grid: bool = True
    #: ``max`` of the map (MuSc), or ``top_percent`` (mean of ``scoring.top_percent`` %).
    image_score: str = "max"
    #: RsCIN: scores smoothed over each image's k most similar in the batch, per k; () = off.
    rescore_k: tuple[int, ...] = (1, 2, 3)
    #: Reject when the score exceeds the batch median by this many robust standard deviations.
    outlier_k: float = 3.0
    #: Optional local CLIP model folder (Hugging Face format, safetensors): its text prompts keep
    #: patches that look damaged out of the reference set. None = vision only.
    clip_model: str | None = None
    #: The object named in the prompts ("a photo of a damaged <object>").
    clip_object: str = "object"
    #: Patches whose CLIP probability of "damaged" exceeds this do not serve as references.
    clip_threshold: float = 0.5
    #: Weight of CLIP's text map in the map (each map over its batch median, then blended); 0 = off.
    clip_map_weight: float = 0.5
    #: FiSeCLIP's restored local correlation in CLIP's last block (sharper patch probabilities).
    clip_local_correlation: bool = True


@dataclass(slots=True)
class TilingConfig:
    """Score large images tile by tile (fit and predict alike), stitching the maps without seams."""

    #: Tile side in source pixels; 0 = off (the whole image is resized to ``image_size``).
    size: int = 0
    #: Pixels shared by neighbouring tiles (at least; tiles are spread evenly to the borders).
    overlap: int = 0


@dataclass(slots=True)
class DetectorConfig:
    """Everything needed to rebuild a detector; round-trips through JSON and YAML."""

    method: str = "memory"
    features: FeatureConfig = field(default_factory=FeatureConfig)
    memory: MemoryBankConfig = field(default_factory=MemoryBankConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    costfilter: CostFilterConfig = field(default_factory=CostFilterConfig)
    zeroshot: ZeroShotConfig = field(default_factory=ZeroShotConfig)
    dfm: DFMConfig = field(default_factory=DFMConfig)
    synthesis: SynthesisConfig = field(default_factory=SynthesisConfig)
    tiling: TilingConfig = field(default_factory=TilingConfig)
    screening: ScreeningConfig = field(default_factory=ScreeningConfig)
    seed: int = 0
    batch_size: int = 32

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def to_json(self) -> str:
        """JSON text, keys sorted so equal configs give equal text."""
        return json.dumps(self.to_dict(), sort_keys=True)

    def to_yaml(self) -> str:
        """YAML text."""
        return yaml.safe_dump(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DetectorConfig:
        """Build from a nested dict; unknown keys are an error, missing keys take defaults."""
        return _build(cls, data, "config")

    @classmethod
    def from_saved(cls, data: dict[str, Any]) -> DetectorConfig:
        """Build from a config saved in a checkpoint or an ONNX file. A saved config is complete,
        so an option it lacks did not exist when it was written: it gets the value that
        reproduces that older behaviour (:data:`LEGACY_VALUES`), not today's default; options
        that moved (:data:`MOVED`) are carried to their new place."""
        data = json.loads(json.dumps(data))
        for (section, key), (new_section, new_key) in MOVED.items():
            old = data.get(section)
            if isinstance(old, dict) and key in old:
                target = data.setdefault(new_section.split(".")[0], {})
                for part in new_section.split(".")[1:]:
                    target = target.setdefault(part, {})
                target[new_key] = old.pop(key)
        for (section, key), value in LEGACY_VALUES.items():
            if isinstance(data.get(section), dict):
                data[section].setdefault(key, value)
        return cls.from_dict(data)

    @classmethod
    def from_file(cls, path: Path | str) -> DetectorConfig:
        """Read a ``.json`` or ``.yaml``/``.yml`` file."""
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise CostfilterError(f"{path}: cannot read config ({exc.strerror})") from None
        try:
            data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (json.JSONDecodeError, yaml.YAMLError) as exc:
            raise CostfilterError(f"{path}: not valid {path.suffix[1:]} ({exc})") from None
        if not isinstance(data, dict):
            raise CostfilterError(f"{path}: expected a mapping of options at the top level")
        return cls.from_dict(data)

    def validate(self) -> None:
        """Raise :class:`CostfilterError` for values that cannot work."""
        f, m, s, c = self.features, self.memory, self.scoring, self.calibration
        if self.batch_size < 1:
            raise CostfilterError(f"batch_size must be ≥ 1, got {self.batch_size}")
        if f.image_size <= 0 or f.image_size % 32:
            raise CostfilterError(f"image_size must be a positive multiple of 32, got {f.image_size}")
        if m.coreset_ratio is not None and not 0 < m.coreset_ratio <= 1:
            raise CostfilterError(f"coreset_ratio must be in (0, 1], got {m.coreset_ratio}")
        if m.bank_size < 1:
            raise CostfilterError(f"bank_size must be ≥ 1, got {m.bank_size}")
        if m.search_precision not in ("auto", "float32", "bfloat16"):
            raise CostfilterError(f"search_precision must be 'auto', 'float32' or 'bfloat16', got {m.search_precision!r}")
        if s.image_score not in ("top_percent", "reweighted_max"):
            raise CostfilterError(f"image_score must be 'top_percent' or 'reweighted_max', got {s.image_score!r}")
        if s.image_score == "reweighted_max" and self.method != "memory":
            raise CostfilterError("image_score 'reweighted_max' is the memory bank's (method: memory)")
        if s.reweight_neighbours < 1:
            raise CostfilterError(f"reweight_neighbours must be ≥ 1, got {s.reweight_neighbours}")
        if m.sampler not in ("greedy", "random"):
            raise CostfilterError(f"sampler must be 'greedy' or 'random', got {m.sampler!r}")
        if m.search not in ("torch", "faiss"):
            raise CostfilterError(f"search must be 'torch' or 'faiss', got {m.search!r}")
        if not 0 < s.top_percent <= 100:
            raise CostfilterError(f"top_percent must be in (0, 100], got {s.top_percent}")
        if c.holdout_fraction is not None and not 0 <= c.holdout_fraction < 1:
            raise CostfilterError(f"holdout_fraction must be in [0, 1), got {c.holdout_fraction}")
        for name in ("false_reject_rate", "pixel_false_alarm_rate"):
            if not 0 < getattr(c, name) < 1:
                raise CostfilterError(f"{name} must be in (0, 1), got {getattr(c, name)}")
        if self.dfm.replay_images < 0 or not 0 <= self.dfm.replay_share < 1:
            raise CostfilterError("dfm.replay_images must be ≥ 0 and dfm.replay_share in [0, 1)")
        z = self.zeroshot
        if not 0 < z.fraction <= 1 or z.batch_size < 2:
            raise CostfilterError("zeroshot.fraction must be in (0, 1] and zeroshot.batch_size ≥ 2")
        if not z.degrees or any(r < 1 or r % 2 == 0 for r in z.degrees) or any(k < 1 for k in z.rescore_k):
            raise CostfilterError("zeroshot.degrees must be odd sizes ≥ 1, zeroshot.rescore_k sizes ≥ 1")
        if not 0 <= z.clip_map_weight <= 1:
            raise CostfilterError(f"zeroshot.clip_map_weight must be in [0, 1], got {z.clip_map_weight}")
        if z.image_score not in ("max", "top_percent"):
            raise CostfilterError(f"zeroshot.image_score must be max or top_percent, got {z.image_score!r}")
        cf = self.costfilter
        if cf.base not in ("memory", "reconstruction"):
            raise CostfilterError(f"costfilter.base must be 'memory' or 'reconstruction', got {cf.base!r}")
        if cf.blend is not None and not 0 <= cf.blend <= 1:
            raise CostfilterError(f"costfilter.blend must be in [0, 1], got {cf.blend}")
        if cf.volume not in ("template", "sorted") or cf.blend_on not in ("filter", "base"):
            raise CostfilterError("costfilter.volume must be 'template' or 'sorted', costfilter.blend_on 'filter' or 'base'")
        if cf.top_k < 1 or cf.n_templates < 1 or not cf.widths:
            raise CostfilterError("costfilter.top_k and n_templates must be ≥ 1 and widths non-empty")
        t = self.tiling
        if t.size < 0 or (t.size and not 0 <= t.overlap < t.size) or (not t.size and t.overlap):
            raise CostfilterError(f"tiling needs size > overlap ≥ 0 (size 0 = off), got size {t.size}, overlap {t.overlap}")
        if t.size and self.method == "zeroshot":
            raise CostfilterError("tiling is not available for zero-shot scoring (its batch is its reference set)")
        sc = self.screening.contamination
        if not (sc == "auto" or (isinstance(sc, float) and 0 <= sc < 0.5)) or self.screening.outlier_k <= 0:
            raise CostfilterError(f"screening.contamination must be 'auto' or a fraction in [0, 0.5), and outlier_k > 0; "
                                  f"got {sc!r}, {self.screening.outlier_k}")
        r = c.review_false_reject_rate
        if r is not None and not c.false_reject_rate < r < 1:
            raise CostfilterError(f"review_false_reject_rate must be in (false_reject_rate, 1), got {r}")


#: (section, option) → the value that reproduces a model saved before the option existed.
LEGACY_VALUES: dict[tuple[str, str], Any] = {
    ("features", "pad_neighbourhood"): False,
    ("memory", "search_precision"): "float32",
    ("memory", "bank_size"): 1000,
    ("calibration", "holdout_fraction"): 0.1,
    ("synthesis", "self_fill"): 0.0,
    ("synthesis", "photometric"): False,
    ("costfilter", "volume"): "sorted",
    ("costfilter", "blend_on"): "base",
    ("costfilter", "n_templates"): 3,
}


#: (section, option) of an older layout → (section path, option) where it lives now.
MOVED: dict[tuple[str, str], tuple[str, str]] = {
    **{("costfilter", k): ("costfilter.training", k)
       for k in ("steps", "time_budget_s", "batch_size", "lr", "val_every", "n_val")},
    **{("dfm", k): ("dfm.training", k) for k in ("steps", "time_budget_s", "batch_size", "lr", "val_every", "n_val")},
    ("costfilter", "texture_dir"): ("synthesis", "texture_dir"),
    ("costfilter", "foreground_threshold"): ("synthesis", "foreground_threshold"),
}


def _check_type(value: Any, hint: Any, where: str) -> Any:
    """``value`` as the annotated type ``hint`` (int, float, bool, str, tuples of them, each
    optionally ``| None``); anything else is a one-line error. Ints are accepted for floats."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        for option in options[:-1]:  # e.g. "auto" or a number: the first type that fits
            try:
                return _check_type(value, option, where)
            except CostfilterError:
                pass
        hint = options[-1]
        args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple:
        if not isinstance(value, (list, tuple)):
            raise CostfilterError(f"{where}: expected a list, got {value!r:.60}")
        return tuple(_check_type(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
    ok = {bool: lambda v: isinstance(v, bool),
          int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
          str: lambda v: isinstance(v, str)}.get(hint)
    if ok is not None and not ok(value):
        raise CostfilterError(f"{where}: expected {'a finite number' if hint is float else hint.__name__}, "
                              f"got {value!r:.60}")
    return float(value) if hint is float else value


def _build(cls: Any, data: dict[str, Any], where: str) -> Any:
    names = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = set(data) - set(names)
    if unknown:
        raise CostfilterError(f"{where}: unknown option(s) {', '.join(sorted(unknown))}")
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        default = getattr(cls(), key)
        if dataclasses.is_dataclass(default):
            if not isinstance(value, dict):
                raise CostfilterError(f"{where}.{key}: expected a mapping")
            kwargs[key] = _build(type(default), value, f"{where}.{key}")
        else:
            kwargs[key] = _check_type(value, hints[key], f"{where}.{key}")
    return cls(**kwargs)
