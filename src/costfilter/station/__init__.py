"""A line station: images from hot folders and camera streams, results to MQTT, HTTP hooks and
JSONL files through an outbox that loses nothing. Needs the ``station`` extra."""

from __future__ import annotations

from .config import StationConfig, load_station
from .runner import Station, open_detector

__all__ = ["Station", "StationConfig", "load_station", "open_detector"]
