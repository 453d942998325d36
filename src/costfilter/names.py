"""The names every registry answers to, importable without torch: the CLI takes its choices from
here, so ``costfilter --help`` starts without loading torch. ``tests/test_registries.py`` checks
each list against its registry."""

from __future__ import annotations

from .methods import REGISTRY

#: every method (``methods.REGISTRY``, itself torch-free)
METHODS: tuple[str, ...] = tuple(REGISTRY)
#: dataset formats (``data.FORMATS``)
FORMATS: tuple[str, ...] = ("mvtec", "mpdd", "btad", "visa", "folder", "elpv")
#: built-in backbones (``backbones.BACKBONES``); ``timm:<model>`` names any timm model besides
BACKBONES: tuple[str, ...] = ("efficientnet_lite0", "efficientnet_lite2")
#: CostFilter-AD's base detectors
COSTFILTER_BASES: tuple[str, ...] = ("memory", "reconstruction")
#: runtimes of an exported ``.onnx`` model (``export.runtime.RUNTIMES``)
RUNTIMES: tuple[str, ...] = ("onnxruntime", "openvino")
#: how ``export --int8`` sets activation ranges (``export.quantize``), the default first
INT8_CALIBRATIONS: tuple[str, ...] = ("percentile", "minmax")
#: which backbone convolutions ``export --int8`` quantises (``export.quantize``), the default first
INT8_SCOPES: tuple[str, ...] = ("dense", "all")
