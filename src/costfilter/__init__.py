"""costfilter: unsupervised visual anomaly detection (memory bank, CostFilter-AD) for CPU and GPU."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .api import Detector
    from .config import DetectorConfig
    from .errors import CostfilterError
    from .results import Prediction

# Imported on first use, so `costfilter --help` and torch-free tools start without loading torch.
_LAZY = {"Detector": ".api", "DetectorConfig": ".config", "CostfilterError": ".errors", "Prediction": ".results"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'costfilter' has no attribute {name!r}")


__all__ = ["CostfilterError", "Detector", "DetectorConfig", "Prediction", "__version__"]
