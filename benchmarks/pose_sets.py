"""Pose-varied copies of an MVTec-layout category, for developing pose handling (issue 46, item 7).

    python -m benchmarks.pose_sets ../shared/data/mpdd/metal_plate --out /tmp/pose/metal_plate

Nothing on disk shows parts in random poses, so this turns a category into one: every image of
``train/`` and ``test/`` is rotated by a seeded angle (uniform in ±``--max-rotation`` degrees),
flipped left-right and/or upside down (each with probability ½ under ``--flip``) and shifted by up
to ``--shift`` of its size; its mask in ``ground_truth/`` gets the very same transform (nearest
neighbour, so it stays binary). The corners uncovered by the rotation are filled with the image's
median colour and with 0 in the mask. Each file's transform is drawn from the seed and the file's
path inside the category, so a rerun, or a run over a subset, gives the same pictures; they are
listed in ``OUT/poses.json``. The source is only read, and ``--out`` may not lie inside it. The
result is never committed: it is development data, made again from the shared sets when needed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from costfilter.atomic import write_text
from costfilter.data.mvtec import load_mvtec
from costfilter.errors import CostfilterError


@dataclass(frozen=True)
class Pose:
    """One file's transform: degrees counter-clockwise, flips, and the shift in pixels."""

    angle: float
    flip_lr: bool
    flip_ud: bool
    dx: int
    dy: int


def draw_pose(seed: int, key: str, size: tuple[int, int], max_rotation: float, flip: bool, shift: float) -> Pose:
    """The transform of the file at ``key`` (its path inside the category) for an image of ``size`` (W, H)."""
    digest = int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "little")
    rng = np.random.default_rng(digest)
    angle = float(rng.uniform(-max_rotation, max_rotation))
    lr, ud = (bool(rng.random() < 0.5), bool(rng.random() < 0.5)) if flip else (False, False)
    dx, dy = (int(np.rint(rng.uniform(-shift, shift) * n)) for n in size)
    return Pose(angle, lr, ud, dx, dy)


def apply_pose(img: Image.Image, pose: Pose, *, mask: bool) -> Image.Image:
    """``img`` under ``pose``: nearest neighbour and 0 fill for a mask, bilinear and the median
    colour (of the image before the transform) for a picture."""
    if pose.flip_lr:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if pose.flip_ud:
        img = img.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    if mask:
        fill: int | tuple[int, ...] = 0
    else:
        median = np.median(np.asarray(img).reshape(-1, len(img.getbands())), axis=0).astype(int)
        fill = tuple(median.tolist()) if len(median) > 1 else int(median[0])
    resample = Image.Resampling.NEAREST if mask else Image.Resampling.BILINEAR
    return img.rotate(pose.angle, resample=resample, translate=(pose.dx, pose.dy), fillcolor=fill)


def make_pose_set(src: Path, out: Path, *, seed: int = 0, max_rotation: float = 180.0, flip: bool = True,
                  shift: float = 0.05, force: bool = False) -> dict[str, dict[str, object]]:
    """Write the pose-varied copy of category ``src`` to ``out``; returns each file's pose by key."""
    src, out = src.resolve(), out.resolve()
    if not (src / "train").is_dir() or not (src / "test").is_dir():
        raise CostfilterError(f"{src}: not a category in the MVTec layout (train/ and test/)")
    if out == src or out.is_relative_to(src) or src.is_relative_to(out):
        raise CostfilterError(f"{out}: --out must lie outside the source category {src} (it is only read)")
    if out.exists() and any(out.iterdir()) and not force:
        raise CostfilterError(f"{out}: already exists and is not empty (use --force to add to it)")
    poses: dict[str, dict[str, object]] = {}
    for sample in load_mvtec(src):  # the layout as the library reads it: images, and each one's mask
        key = sample.path.relative_to(src).as_posix()
        with Image.open(sample.path) as img:
            img.load()
            pose = draw_pose(seed, key, img.size, max_rotation, flip, shift)
            target = out / key
            target.parent.mkdir(parents=True, exist_ok=True)
            apply_pose(img, pose, mask=False).save(target)
        poses[key] = asdict(pose)
        if sample.mask is not None:
            with Image.open(sample.mask) as mask:
                mask.load()
                target = out / sample.mask.relative_to(src)
                target.parent.mkdir(parents=True, exist_ok=True)
                apply_pose(mask, pose, mask=True).save(target)
    write_text(out / "poses.json", json.dumps({"source": str(src), "seed": seed, "max_rotation": max_rotation,
                                               "flip": flip, "shift": shift, "poses": poses}, indent=1))
    return poses


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("category", type=Path, help="an MVTec-layout category (train/, test/, ground_truth/)")
    ap.add_argument("--out", type=Path, required=True, help="where the pose-varied copy goes (outside the source)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-rotation", type=float, default=180.0, help="degrees either way (default 180: any pose)")
    ap.add_argument("--no-flip", action="store_true", help="rotate and shift only")
    ap.add_argument("--shift", type=float, default=0.05, help="largest shift, as a share of the image size")
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args()
    try:
        poses = make_pose_set(args.category, args.out, seed=args.seed, max_rotation=args.max_rotation,
                              flip=not args.no_flip, shift=args.shift, force=args.force)
    except CostfilterError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(f"{len(poses)} images (and their masks) written to {args.out}; poses in {args.out / 'poses.json'}")


if __name__ == "__main__":
    main()
