"""The service's request and response bodies (pydantic), and the helpers that fill them."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from pydantic import BaseModel, Field

from .store import FILE_KINDS


class RegionOut(BaseModel):
    box: list[int] = Field(description="x0, y0, x1, y1 (inclusive) in source pixels")
    area_px: int
    area_pct: float
    peak: float
    mean: float


class PredictionOut(BaseModel):
    id: str
    created: str = Field(description="UTC, ISO 8601")
    filename: str
    image_sha256: str
    width: int
    height: int
    score: float
    decision: str = Field(description="pass | review | reject | unknown")
    typical_score: float
    image_threshold: float
    pixel_threshold: float
    map_scale: float = Field(description="map PNG grey level 255 = this score (128 = the pixel threshold)")
    model_sha256: str
    model_version: str
    regions: list[RegionOut]
    links: dict[str, str] = Field(description="URLs of the stored image, overlay, mask, map and thumbnail")
    overlay_png_base64: str | None = None
    mask_png_base64: str | None = None
    category: str | None = Field(None, description="the learned category the image was scored as "
                                                   "(models of several, fit --continue; in this response only)")
    station: str | None = Field(None, description="the station that inspected it (None: an upload)")
    source: str | None = Field(None, description="the station's source, or 'upload'")
    verdict: dict[str, Any] | None = Field(None, description="the latest operator verdict (review queue only)")


class VerdictIn(BaseModel):
    verdict: str = Field(pattern="^(good|defect)$")
    defect_type: str | None = Field(None, max_length=64)
    note: str | None = Field(None, max_length=500)


class ApplyIn(BaseModel):
    force: bool = Field(False, description="apply even though it passes a confirmed defect (admin)")
    recalibrate: bool = Field(False, description="re-calibrate the thresholds on the applied images too (only for "
                                                 "images that are a random sample of good parts, not the review "
                                                 "queue's flagged ones)")
    note: str = Field("", max_length=500)


class RollbackIn(BaseModel):
    to: int | None = Field(None, description="the version to serve (default: the active version's parent)")


class ResultsPage(BaseModel):
    total: int
    limit: int
    offset: int
    items: list[PredictionOut]


class Health(BaseModel):
    status: str = Field(description="ok, or degraded when predictions cannot be stored (see problem)")
    model: dict[str, Any]
    database: str
    predictions: int
    problem: str | None = Field(None, description="why the service is degraded: predictions are refused (503/507) "
                                                 "until it is fixed")
    station: dict[str, Any] | None = Field(None, description="a station's sources and sinks, each with its state, "
                                                             "and the outbox backlog per sink")


def _user(request: Request) -> tuple[str, str]:
    """``(name, role)`` of the key the request came with (see :class:`~costfilter.serve.security.Guard`)."""
    return tuple(request.scope.get("state", {}).get("user", ("local", "admin")))  # type: ignore[return-value]


def _short(text: str, n: int = 64) -> str:
    """A client's string as echoed in an error: at most ``n`` characters."""
    return text if len(text) <= n else text[:n] + "…"


def _links(record_id: str) -> dict[str, str]:
    return {kind: f"/results/{record_id}/{kind}" for kind in FILE_KINDS}


def _out(row: dict[str, Any], **extra: Any) -> PredictionOut:
    fields = {k: v for k, v in row.items() if k != "files"}
    return PredictionOut(**fields, links=_links(row["id"]), **extra)


class PreviewIn(BaseModel):
    recalibrate: bool = Field(False, description="as in apply")
