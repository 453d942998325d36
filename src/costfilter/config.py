"""Typed configuration, saved inside every checkpoint so ``predict`` needs nothing else."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .config_rules import LEGACY_VALUES, MOVED, build, check_config
from .errors import CostfilterError


@dataclass(slots=True)
class FeatureConfig:
    """How images become patch features."""

    #: ``efficientnet_lite0``/``2``, ``timm:<model>``, or ``hf:PATH`` (a local Hugging Face ViT folder:
    #: DINO, DINOv2 with or without registers, DINOv3, CLIP image tower).
    backbone: str = "efficientnet_lite0"
    #: EfficientNet stages to tap (3 → stride 8, 5 → stride 16 for the Lite family); for a ViT,
    #: block numbers (1 = the first block's output).
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
    #: ViT backbones (``hf:PATH``): split the tapped blocks into this many consecutive groups and
    #: average each (CostFilter-AD's reference fuses 8 middle blocks into 2); 0 = one map per block.
    layer_groups: int = 0
    #: Accept a weights file that leaves some of the backbone's weights out (they stay randomly
    #: initialised, seeded). Off: such a file is a one-line error, never a silently random backbone.
    allow_partial_weights: bool = False


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
    #: With a training-state file (``fit --resume``): also save it at least this often (seconds),
    #: besides at every validation, so a killed run loses at most this much work.
    save_every_s: float = 120.0


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
    max_templates: int = 256  # the pool the templates are chosen from (see n_templates)
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
    #: λ; ``None`` = chosen on validation (the base alone, unless the filter's gain there is larger
    #: than its bootstrap noise), among filter weights up to ``max_blend``. One rule for validation
    #: and inference: :func:`~costfilter.methods.costfilter.model.blend`.
    blend: float | None = None
    #: The largest filter weight validation may choose (λ under ``blend_on: filter``): 0.1, the top of the reference's hand-set values
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

    method: str = "memory"  # memory, costfilter, dfm or zeroshot
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
    seed: int = 0  # every random choice: coreset, holdouts, synthetic anomalies, training
    batch_size: int = 32  # images per backbone batch when fitting and scoring
    #: few-shot: fit on this many normal training images per category, drawn with ``seed``
    #: (None: every one)
    shots: int | None = None
    #: the preset these values started from (:mod:`costfilter.presets`), None: the defaults
    preset: str | None = None

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
        return build(cls, data, "config")

    @classmethod
    def from_saved(cls, data: dict[str, Any]) -> DetectorConfig:
        """Build from a config saved in a checkpoint or an ONNX file. A saved config is complete,
        so an option it lacks did not exist when it was written: it gets the value that
        reproduces that older behaviour (:data:`.config_rules.LEGACY_VALUES`), not today's default; options
        that moved (:data:`.config_rules.MOVED`) are carried to their new place."""
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
        """Raise :class:`CostfilterError` for values that cannot work (see :func:`.config_rules.check_config`)."""
        check_config(self)
