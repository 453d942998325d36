"""Helpers shared by the folder-tree formats."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from ..errors import DataError
from .imageio import list_images


def images_in(folder: Path) -> list[Path]:
    """Images in ``folder``; a missing or empty folder is an error naming it."""
    if not folder.is_dir():
        raise DataError(f"{folder}: folder not found")
    files = list_images(folder)
    if not files:
        raise DataError(f"{folder}: folder holds no images")
    return files


def find_categories(
    root: Path, is_category: Callable[[Path], bool], wanted: Sequence[str] | None, layout: str, max_depth: int = 1
) -> list[Path]:
    """``root`` itself if it is one category, else the category folders at most ``max_depth``
    levels below it (a category's own sub-folders are not searched), sorted by name and
    optionally filtered by ``wanted`` names."""
    if not root.is_dir():
        raise DataError(f"{root}: folder not found (expected the {layout} layout)")
    found, frontier = [], [root]
    for _ in range(max_depth + 1):
        below = []
        for d in frontier:
            if is_category(d):
                found.append(d)
            else:
                below += sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
        frontier = below
    if not found:
        raise DataError(f"{root}: no category in the {layout} layout found here")
    found = sorted(found, key=lambda p: p.name)
    if wanted:
        by_name = {p.name: p for p in found}
        missing = [c for c in wanted if c not in by_name]
        if missing:
            raise DataError(f"{root}: category {missing[0]!r} not found (have: {', '.join(by_name)})")
        found = [by_name[c] for c in wanted]
    return found


def mask_for(image: Path, mask_dir: Path, suffixes: Sequence[str], extensions: Sequence[str]) -> Path:
    """The mask file of ``image`` inside ``mask_dir``; missing is an error naming the image."""
    for suffix in suffixes:
        for ext in extensions:
            candidate = mask_dir / f"{image.stem}{suffix}{ext}"
            if candidate.is_file():
                return candidate
    raise DataError(f"{image}: no mask found in {mask_dir} (expected {image.stem}{suffixes[0]}{extensions[0]})")
