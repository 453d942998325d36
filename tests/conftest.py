"""Tiny, seeded fixture trees in the exact public layouts (MVTec AD, MPDD, BTAD, VisA, folder, ELPV)."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.service import free_port, start_server  # noqa: F401  (the server tests use them)
from costfilter.config import DetectorConfig
from costfilter.toy_images import planted_defect, texture

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two test processes on two cores: one torch thread each (and in the processes they start),
    # or each would run two threads on a core the other needs.
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)

SIZE = 48  # source images; the model resizes to 64


def defect(rng: np.random.Generator, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    return planted_defect(rng, size)


def save(arr: np.ndarray, path: Path, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(arr)
    if mode:
        img = img.convert(mode)
    img.save(path)
    return path


def make_mvtec(root: Path, categories=("alpha",), n_train=8, n_good=3, n_bad=3, seed=0, defects=("spot",)) -> Path:
    """``<cat>/train/good``, ``<cat>/test/{good,<defect>}``, ``<cat>/ground_truth/<defect>/<stem>_mask.png``
    (``n_bad`` images of each of ``defects``)."""
    rng = np.random.default_rng(seed)
    for cat in categories:
        for i in range(n_train):
            save(texture(rng), root / cat / "train" / "good" / f"{i:03d}.png")
        for i in range(n_good):
            save(texture(rng), root / cat / "test" / "good" / f"{i:03d}.png")
        for kind in defects:
            for i in range(n_bad):
                img, mask = defect(rng)
                save(img, root / cat / "test" / kind / f"{i:03d}.png")
                save(mask, root / cat / "ground_truth" / kind / f"{i:03d}_mask.png")
    return root


def make_tiny_clip(folder: Path, patch_size: int = 8, vision_layers: int = 2) -> Path:
    """A Hugging Face CLIP folder with random weights (seed 0): config, safetensors weights and a
    character-level BPE tokenizer, small enough to build in a test."""
    import json

    import torch
    import transformers

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in sorted(set("abcdefghijklmnopqrstuvwxyz.-")):
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt")).save_pretrained(folder)
    text = {"vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
            "num_attention_heads": 4, "max_position_embeddings": 77, "bos_token_id": 0, "eos_token_id": 1,
            "pad_token_id": 1}
    vision = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": vision_layers, "num_attention_heads": 4,
              "image_size": 32, "patch_size": patch_size}
    torch.manual_seed(0)
    transformers.CLIPModel(transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
                           ).save_pretrained(folder)
    return folder


def make_btad(root: Path, product="01", n_train=6, seed=0) -> Path:
    """``<p>/train/ok/*.bmp``, ``<p>/test/{ok,ko}/*.bmp``, ``<p>/ground_truth/ko/<stem>.png``."""
    rng = np.random.default_rng(seed)
    for i in range(n_train):
        save(texture(rng), root / product / "train" / "ok" / f"{i:04d}.bmp")
    for i in range(2):
        save(texture(rng), root / product / "test" / "ok" / f"{i:04d}.bmp")
        img, mask = defect(rng)
        save(img, root / product / "test" / "ko" / f"{i:04d}.bmp")
        save(mask, root / product / "ground_truth" / "ko" / f"{i:04d}.png")
    return root


def make_visa(root: Path, objects=("candle", "pcb1"), seed=0) -> Path:
    """Raw VisA: ``<obj>/Data/Images/{Normal,Anomaly}/*.JPG``, ``<obj>/Data/Masks/Anomaly/*.png`` (0/1
    values) and ``split_csv/1cls.csv`` with ``object,split,label,image,mask``."""
    rng = np.random.default_rng(seed)
    rows = []
    for obj in objects:
        for i in range(5):
            rel = f"{obj}/Data/Images/Normal/{i:04d}.JPG"
            save(texture(rng), root / rel)
            rows.append([obj, "train" if i < 3 else "test", "normal", rel, ""])
        for i in range(2):
            img, mask = defect(rng)
            rel, mrel = f"{obj}/Data/Images/Anomaly/{i:03d}.JPG", f"{obj}/Data/Masks/Anomaly/{i:03d}.png"
            save(img, root / rel)
            save((mask > 0).astype(np.uint8), root / mrel)
            rows.append([obj, "test", "anomaly", rel, mrel])
    (root / "split_csv").mkdir(parents=True, exist_ok=True)
    with open(root / "split_csv" / "1cls.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["object", "split", "label", "image", "mask"])
        w.writerows(rows)
    return root


def make_elpv(root: Path, seed=0) -> Path:
    """``labels.csv`` (path, probability, type; whitespace-separated) and ``images/cellNNNN.png``."""
    rng = np.random.default_rng(seed)
    lines = []
    n = 0
    for cell_type in ("mono", "poly"):
        for prob in [0.0] * 10 + [1.0] * 3 + [1 / 3, 2 / 3]:
            n += 1
            img = defect(rng)[0] if prob > 0.5 else texture(rng)
            save(img[..., 0], root / "images" / f"cell{n:04d}.png")
            lines.append(f"images/cell{n:04d}.png  {prob:.16f}  {cell_type}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root


def _png(arr: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def texture_png(seed: int) -> bytes:
    """A normal fixture image as PNG bytes (an upload)."""
    return _png(texture(np.random.default_rng(seed)))


def good_png(root: Path) -> bytes:
    """A good image the fitted fixture model surely passes: one of its own training images (its
    own rows are in the bank, so it scores near zero; the threshold comes from leave-one-out scores)."""
    return (root / "alpha" / "train" / "good" / "000.png").read_bytes()


def planted_defect_png(seed: int) -> bytes:
    """A fixture image with a planted defect as PNG bytes."""
    return _png(defect(np.random.default_rng(seed))[0])


def make_unlabelled(folder: Path, n_good: int = 7, seed: int = 0) -> Path:
    """A flat folder of ``n_good`` normal images and one ``bad.png`` with a planted defect."""
    rng = np.random.default_rng(seed)
    for i in range(n_good):
        save(texture(rng), folder / f"ok_{i}.png")
    save(defect(rng)[0], folder / "bad.png")
    return folder


def read_results(out: Path) -> dict[str, dict]:
    """``predict``'s results.jsonl keyed by image file name."""
    import json

    return {json.loads(line)["image"].split("/")[-1]: json.loads(line) for line in open(out / "results.jsonl")}


def small_config(**memory) -> DetectorConfig:
    """A fast config for tests: 64 px images, a generous coreset, small batches."""
    cfg = DetectorConfig(batch_size=4)
    cfg.features.image_size = 64
    cfg.memory.coreset_ratio = memory.pop("coreset_ratio", 0.25)
    cfg.memory.min_bank_size = 0  # tiny fixtures: keep the coreset a real subsample
    for k, v in memory.items():
        setattr(cfg.memory, k, v)
    cfg.scoring.sigma = 1.0
    # At 64 px the deepest features see the whole image, so a planted defect moves every patch;
    # the unknown-input check is tested on its own at a realistic size (test_decisions.py).
    cfg.calibration.ood_factor = 0.0
    return cfg


@pytest.fixture
def mvtec_root(tmp_path: Path) -> Path:
    return make_mvtec(tmp_path / "mvtec", categories=("alpha", "beta"))


@pytest.fixture(scope="session")
def fitted(tmp_path_factory):
    """One fitted detector on a one-category MVTec tree, shared by the read-only tests."""
    from costfilter import Detector

    root = make_mvtec(tmp_path_factory.mktemp("fit") / "mvtec", categories=("alpha",))
    det = Detector(small_config(), progress=False).fit(root)
    return det, root
