"""costfilter: unsupervised visual anomaly detection (memory bank, CostFilter-AD) for CPU and GPU."""

from __future__ import annotations

__version__ = "0.1.0"

from .api import Detector, Prediction  # noqa: E402
from .config import DetectorConfig  # noqa: E402
from .errors import CostfilterError  # noqa: E402

__all__ = ["CostfilterError", "Detector", "DetectorConfig", "Prediction", "__version__"]
