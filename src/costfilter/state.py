"""What a fitted detector knows besides its tensors and config: saved in the checkpoint as JSON,
read back typed (the CLI, the service, export and the benchmarks use these fields)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .decisions import OperatingPoint, Thresholds
from .training.report import TrainReport


@dataclass
class LearnedCategory:
    """One category of a model that learned several one after another (``fit --continue``),
    in the order they were learned: its own thresholds, calibration and fit facts."""

    name: str
    thresholds: Thresholds
    n_train_images: int = 0
    n_calibration_images: int = 0
    #: rows this category added to the bank
    bank_rows: int = 0
    calibration_scores: list[float] = field(default_factory=list)
    operating_points: list[OperatingPoint] = field(default_factory=list)
    training_data: dict[str, Any] = field(default_factory=dict)
    created: str | None = None
    training: TrainReport | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LearnedCategory:
        data = dict(data)
        data["thresholds"] = Thresholds.from_dict(data["thresholds"])
        data["operating_points"] = [OperatingPoint(**p) for p in data.get("operating_points", [])]
        if data.get("training") is not None:
            data["training"] = TrainReport.from_dict(data["training"])
        return cls(**data)


@dataclass
class DetectorState:
    """Facts about a fit: data, sizes, timings, calibration and training."""

    categories: list[str] = field(default_factory=list)
    #: CostFilter-AD's class-aware adaptor: class index → category
    class_names: list[str] = field(default_factory=list)
    n_train_images: int = 0
    #: fit images whose patches went into the bank / training
    n_bank_images: int = 0
    n_calibration_images: int = 0
    bank_size: int | None = None
    timings: dict[str, float] = field(default_factory=dict)
    created: str | None = None
    #: digest of the training images (names, sizes, SHA-256)
    training_data: dict[str, Any] = field(default_factory=dict)
    #: the first 16 hex digits of each fit image's SHA-256: ``calibrate`` refuses those images
    training_hashes: list[str] = field(default_factory=list)
    #: training images flagged as possible defects, and those left out of the fit
    #: (:class:`costfilter.screening.Screening` as a dict; None: fitted before screening existed)
    screening: dict[str, Any] | None = None
    #: SHA-256 of the backbone weights file the model was fitted with (``features.weights``);
    #: inside the checkpoint's hash and signature, so a replaced weights file is refused on load
    weights_sha256: str | None = None
    environment: dict[str, Any] = field(default_factory=dict)
    operating_points: list[OperatingPoint] = field(default_factory=list)
    #: image scores of the calibration images (re-calibration compares against them)
    calibration_scores: list[float] = field(default_factory=list)
    #: map peaks and typical-patch scores of the same images (empty: fitted before they were
    #: kept); teaching re-calibrates the pixel threshold and the drift monitor compares with them
    calibration_peaks: list[float] = field(default_factory=list)
    calibration_typical: list[float] = field(default_factory=list)
    #: confirmed-good images appended to the bank after the fit (``Detector.teach``), one entry
    #: per step: images, rows added, digest of the images, when
    taught: list[dict[str, Any]] = field(default_factory=list)
    training: TrainReport | None = None
    #: reconstruction base: first and last training loss
    reconstruction_loss: list[float] = field(default_factory=list)
    #: categories learned one after another (``fit --continue``), in that order; empty for a
    #: model fitted once, whose thresholds are the detector's own
    learned: list[LearnedCategory] = field(default_factory=list)
    #: ``--image-size auto``: every size tried and the one chosen
    #: (:class:`costfilter.sizing.SizeChoice` as a dict; None: the size was given)
    image_size_choice: dict[str, Any] | None = None
    #: SHA-256 of the file this detector was loaded from (not saved)
    sha256: str | None = None
    #: exported models: the SHA-256 of the checkpoint they came from
    source_sha256: str | None = None
    #: the loaded file's signature: ``valid`` (checked with the key set), ``unchecked`` (signed,
    #: no key set here), ``unsigned`` (not saved)
    signature: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (without ``sha256`` and ``signature``, which belong to the file)."""
        out = dataclasses.asdict(self)
        out.pop("sha256")
        out.pop("signature")
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], sha256: str | None = None) -> DetectorState:
        """From a saved dict; keys this version does not know are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        known = {k: v for k, v in data.items() if k in names}
        known["operating_points"] = [OperatingPoint(**p) for p in known.get("operating_points", [])]
        if known.get("training") is not None:
            known["training"] = TrainReport.from_dict(known["training"])
        known["learned"] = [LearnedCategory.from_dict(c) for c in known.get("learned", [])]
        known["sha256"] = sha256
        known.pop("signature", None)
        return cls(**known)
