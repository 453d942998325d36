"""A station's configuration file (YAML): the model, where the history lives, the operating
point, the sources images come from and the sinks results go to. Read into typed dataclasses;
a wrong key, type or value is a one-line error naming the file and the entry.

Secrets are read from environment variables named in the file (``password_env``,
``secret_env``), so the file itself can be committed and shown.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..drift import DriftConfig
from ..errors import CostfilterError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
#: retries of a sink that is down, or of a stream that dropped, are at most this far apart by default
BACKOFF_MAX_S = 10.0


@dataclass
class FolderSource:
    """A hot folder: each new image inspected once, then moved to ``done`` or ``failed``."""

    path: Path  # the hot folder (watched recursively unless recursive is false)
    done: Path | None = None  # default <path>/done
    failed: Path | None = None  # default <path>/failed
    #: besides the image itself being complete, wait until a file is unchanged this long (for a
    #: writer that rewrites a complete image); 0: take it as soon as it decodes whole
    settle_s: float = 0.0
    #: a file whose image is still incomplete this long after its last change is failed
    incomplete_timeout_s: float = 10.0
    #: how often the folder is listed besides the kernel's events (all a network share gives)
    poll_s: float = 0.2
    #: pick files up on the kernel's close-write and moved-to events (inotify) where it has them
    events: bool = True
    batch: int = 8  # files scored together when several are waiting
    recursive: bool = True  # sub-folders too (linked ones followed, each real folder once)
    name: str = ""  # in /health, messages and logs (default: kind and path, URL or host)


@dataclass
class StreamSource:
    """A camera or video: an RTSP/HTTP URL, a device number (USB) or a video file."""

    url: str  # an RTSP/HTTP URL, a USB device number or a video file (relative: from the station file)
    every: int = 1  # inspect every N-th frame read
    max_fps: float | None = None  # and at most this many frames per second
    reconnect: bool | None = None  # default: yes for URLs and devices, no for a video file (it ends)
    backoff_max_s: float = BACKOFF_MAX_S  # a dropped stream is reopened with back-off up to this
    name: str = ""  # in /health, messages and logs (default: kind and path, URL or host)


@dataclass
class MqttSink:
    """An MQTT broker: one message per image, delivered once the broker acknowledged it."""

    host: str  # the broker's host name or address
    port: int = 1883  # 8883 is usual with TLS
    topic: str = ""  # default costfilter/<station>/inspections
    qos: int = 1  # 0, 1 or 2; at 1 and 2 a message counts once the broker acknowledged it, at 0 on sending
    username: str | None = None  # with password_env, the broker's user
    password_env: str | None = None  # the environment variable holding the password
    tls: bool = False  # connect over TLS, checking the broker's certificate
    ca_file: Path | None = None  # the CA certificate the broker's is checked against (default: the system's)
    client_id: str | None = None  # default costfilter-<station>-<name>
    timeout_s: float = 10.0  # a publish not acknowledged this long counts as failed and is retried
    name: str = ""  # in /health and the logs (default mqtt-<host>)


@dataclass
class WebhookSink:
    """An HTTP endpoint: each message a JSON POST; any 2xx acknowledges."""

    url: str  # the endpoint (https:// for anything off this machine)
    secret_env: str | None = None  # HMAC-SHA256 key: X-Costfilter-Signature: sha256=<hex>
    timeout_s: float = 10.0  # a POST not answered this long counts as failed and is retried
    headers: dict[str, str] = field(default_factory=dict)  # extra HTTP headers on every POST
    name: str = ""  # in /health, messages and logs (default: kind and path, URL or host)


@dataclass
class FolderSink:
    """A JSON-lines file on disk, flushed and synced per message."""

    path: Path  # a JSONL file, one message a line
    name: str = ""  # in /health, messages and logs (default: kind and path, URL or host)


@dataclass
class OperatingPoint:
    """The decision threshold the station uses instead of the model's own: one of the two."""

    false_reject: float | None = None  # a target false-reject rate on the model's calibration images
    threshold: float | None = None  # an image-score threshold, as is


@dataclass
class StationConfig:
    """A station file: where images come from, the model, where results go."""

    station: str  # names the station in every message and the default MQTT topic
    model: Path  # a checkpoint or an exported .onnx file
    store: Path  # history database, stored images and heat-maps, and the outbox
    sources: list[FolderSource | StreamSource]  # entries with kind: folder or stream
    sinks: list[MqttSink | WebhookSink | FolderSink]  # entries with kind: mqtt, webhook or folder
    db: str | None = None  # a SQLAlchemy URL instead of SQLite in the store folder
    runtime: str | None = None  # for an .onnx model: onnxruntime (default) or openvino
    operating_point: OperatingPoint | None = None  # default: the model's own image threshold
    backoff_max_s: float = BACKOFF_MAX_S  # a sink that is down is retried at most this far apart
    #: the audit trail's head is sent to every sink this often when it moved (0: never), so a copy
    #: kept outside the station names a trail cut short (``audit verify --anchor``)
    anchor_s: float = 300.0
    #: a source, sink or the model thread that shows no sign of life this long (beyond its own
    #: time-outs) is reported stalled: /health turns red and the sinks get an alarm
    watchdog_s: float = 60.0
    #: the drift monitor's window and false-alarm budget (:class:`~costfilter.drift.DriftConfig`)
    drift: DriftConfig = field(default_factory=DriftConfig)
    file: Path = Path("station.yaml")  # the file it was read from (set when read; relative paths start there)


SOURCE_KINDS: dict[str, type] = {"folder": FolderSource, "stream": StreamSource}
SINK_KINDS: dict[str, type] = {"mqtt": MqttSink, "webhook": WebhookSink, "folder": FolderSink}


def load_station(path: Path | str) -> StationConfig:
    """Read and check a station file; relative paths are taken from the file's folder."""
    import yaml

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CostfilterError(f"{path}: cannot read the station file ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise CostfilterError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
    if not isinstance(raw, dict):
        raise CostfilterError(f"{path}: a station file is a mapping (station:, model:, sources:, sinks:)")
    base = path.resolve().parent
    if "file" in raw:
        raise CostfilterError(f"{path}: unknown key 'file'")
    top = {k: v for k, v in raw.items() if k not in ("sources", "sinks", "operating_point", "drift")}
    cfg = _build(StationConfig, dict(top, sources=[], sinks=[]), f"{path}", base)
    cfg.file = path  # as given (errors name it so); not a path inside the file, taken from its folder
    if not NAME.match(cfg.station):
        raise CostfilterError(f"{path}: station: {cfg.station!r} must be letters, digits, '.', '_' or '-' (≤ 64)")
    if raw.get("operating_point") is not None:
        cfg.operating_point = _build(OperatingPoint, raw["operating_point"], f"{path}: operating_point", base)
        if (cfg.operating_point.false_reject is None) == (cfg.operating_point.threshold is None):
            raise CostfilterError(f"{path}: operating_point: give false_reject or threshold, not both or neither")
    if raw.get("drift") is not None:
        cfg.drift = _build(DriftConfig, raw["drift"], f"{path}: drift", base)
        d = cfg.drift
        if d.window < 2 or d.baseline < 2 or not 0 < d.alpha < 1 or d.history < 1:
            raise CostfilterError(f"{path}: drift: window ≥ 2, baseline ≥ 2, 0 < alpha < 1, history ≥ 1")
    cfg.sources = [_entry(SOURCE_KINDS, e, f"{path}: sources[{i}]", base) for i, e in enumerate(_list(raw, "sources", path))]
    cfg.sinks = [_entry(SINK_KINDS, e, f"{path}: sinks[{i}]", base) for i, e in enumerate(_list(raw, "sinks", path))]
    for kind, entries in (("source", cfg.sources), ("sink", cfg.sinks)):
        names = [e.name for e in entries]
        dup = next((n for n in names if names.count(n) > 1), None)
        if dup:
            raise CostfilterError(f"{path}: two {kind}s named {dup!r}; give each a distinct name")
    if not cfg.sources:
        raise CostfilterError(f"{path}: no sources: give at least one (kind: folder or kind: stream)")
    _check(cfg)
    return cfg


def _list(raw: dict[str, Any], key: str, path: Path) -> list[Any]:
    value = raw.get(key) or []
    if not isinstance(value, list):
        raise CostfilterError(f"{path}: {key}: a list of entries, each with a kind:")
    return value


def _entry(kinds: dict[str, type], entry: Any, where: str, base: Path) -> Any:
    if not isinstance(entry, dict) or "kind" not in entry:
        raise CostfilterError(f"{where}: each entry is a mapping with a kind: ({' or '.join(kinds)})")
    kind = entry["kind"]
    if kind not in kinds:
        raise CostfilterError(f"{where}: unknown kind {kind!r} (known: {', '.join(kinds)})")
    obj = _build(kinds[kind], {k: v for k, v in entry.items() if k != "kind"}, f"{where} ({kind})", base)
    if not obj.name:
        obj.name = _default_name(kind, obj)
    if not NAME.match(obj.name):
        raise CostfilterError(f"{where}: name {obj.name!r} must be letters, digits, '.', '_' or '-' (≤ 64)")
    return obj


def _default_name(kind: str, obj: Any) -> str:
    target = getattr(obj, "path", None) or getattr(obj, "host", None) or getattr(obj, "url", "")
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(str(target)).name or str(target)).strip("-.") or kind
    return f"{kind}-{stem}"[:64]


def _build(cls: type, values: Any, where: str, base: Path) -> Any:
    if not isinstance(values, dict):
        raise CostfilterError(f"{where}: expected a mapping, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise CostfilterError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(f for f in fields if f != 'file')})")
    kwargs = {}
    for key, value in values.items():
        kwargs[key] = _typed(value, hints[key], f"{where}: {key}", base)
    missing = [f.name for f in fields.values() if f.name not in kwargs
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise CostfilterError(f"{where}: missing {missing[0]!r}")
    return cls(**kwargs)


def _typed(value: Any, hint: Any, where: str, base: Path) -> Any:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if value is None:
        if type(None) in typing.get_args(hint):
            return None
        raise CostfilterError(f"{where}: a value is required")
    target = args[0] if len(args) == 1 and typing.get_origin(hint) is not dict else hint
    if typing.get_origin(target) is dict:
        if not isinstance(value, dict):
            raise CostfilterError(f"{where}: expected a mapping")
        return {str(k): str(v) for k, v in value.items()}
    if target is Path:
        if not isinstance(value, str | os.PathLike):
            raise CostfilterError(f"{where}: expected a path, got {value!r}")
        p = Path(os.path.expanduser(str(value)))
        return p if p.is_absolute() else base / p
    if target is bool:
        if not isinstance(value, bool):
            raise CostfilterError(f"{where}: expected true or false, got {value!r}")
        return value
    if target is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise CostfilterError(f"{where}: expected a whole number, got {value!r}")
        return value
    if target is float:
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            raise CostfilterError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if target is str:
        if not isinstance(value, str | int) or isinstance(value, bool):
            raise CostfilterError(f"{where}: expected text, got {value!r}")
        return str(value)
    return value


def _check(cfg: StationConfig) -> None:
    where = str(cfg.file)
    for s in cfg.sources:
        if isinstance(s, FolderSource):
            if s.settle_s < 0 or s.poll_s <= 0 or s.batch < 1 or s.incomplete_timeout_s <= 0:
                raise CostfilterError(f"{where}: source {s.name}: settle_s ≥ 0, poll_s > 0, batch ≥ 1 and "
                                      "incomplete_timeout_s > 0")
            s.done = s.done or s.path / "done"
            s.failed = s.failed or s.path / "failed"
        else:
            if s.every < 1 or (s.max_fps is not None and s.max_fps <= 0) or s.backoff_max_s <= 0:
                raise CostfilterError(f"{where}: source {s.name}: every ≥ 1, max_fps > 0, backoff_max_s > 0")
            # a video file named relative to the station file, as every other path in it is
            if not s.url.isdigit() and "://" not in s.url and not Path(s.url).expanduser().is_absolute():
                s.url = str(cfg.file.resolve().parent / s.url)
    _check_folders(cfg)
    for k in cfg.sinks:
        if isinstance(k, MqttSink):
            if k.qos not in (0, 1, 2):
                raise CostfilterError(f"{where}: sink {k.name}: qos is 0, 1 or 2")
            if not 0 < k.port < 65536:
                raise CostfilterError(f"{where}: sink {k.name}: port {k.port} out of range")
            k.topic = k.topic or f"costfilter/{cfg.station}/inspections"
            if any(ch in k.topic for ch in "+#\0") or k.topic.startswith("$"):
                raise CostfilterError(f"{where}: sink {k.name}: topic {k.topic!r}: a publish topic cannot hold the "
                                      "wildcards '+' or '#', a NUL or start with '$'")
        if isinstance(k, WebhookSink) and not k.url.startswith(("http://", "https://")):
            raise CostfilterError(f"{where}: sink {k.name}: url must start with http:// or https://")
        if isinstance(k, MqttSink | WebhookSink) and not (k.timeout_s > 0 and math.isfinite(k.timeout_s)):
            raise CostfilterError(f"{where}: sink {k.name}: timeout_s must be a positive number of seconds")
        for env in (getattr(k, "password_env", None), getattr(k, "secret_env", None)):
            if env and env not in os.environ:
                raise CostfilterError(f"{where}: sink {k.name}: the environment variable {env} is not set")
    for key in ("backoff_max_s", "watchdog_s"):
        if not getattr(cfg, key) > 0:
            raise CostfilterError(f"{where}: {key} must be positive")
    if cfg.anchor_s < 0:
        raise CostfilterError(f"{where}: anchor_s must be ≥ 0 (0: no anchors)")


def _inside(a: Path, b: Path) -> bool:
    """``a`` is ``b`` or lies below it."""
    return a == b or b in a.parents


def _check_folders(cfg: StationConfig) -> None:
    """Refuse folder relations that loop or collide: a file moved to ``done``/``failed`` must
    never be found again by any source, and no file may be found by two sources."""
    where = str(cfg.file)
    folders = [s for s in cfg.sources if isinstance(s, FolderSource)]
    real = {id(s): (s.path.resolve(), s.done.resolve(), s.failed.resolve()) for s in folders}  # type: ignore[union-attr]
    for s in folders:
        path, done, failed = real[id(s)]
        if done == path or failed == path:
            raise CostfilterError(f"{where}: source {s.name}: done and failed must not be the watched folder {s.path} "
                                  "itself (each image would be inspected again and again)")
        if _inside(path, done) or _inside(path, failed):
            raise CostfilterError(f"{where}: source {s.name}: the watched folder {s.path} lies inside its own done "
                                  "or failed folder")
        if _inside(done, failed) or _inside(failed, done):
            raise CostfilterError(f"{where}: source {s.name}: done ({s.done}) and failed ({s.failed}) must be "
                                  "separate folders, neither inside the other")
        for o in folders:
            if o is s:
                continue
            opath = real[id(o)][0]
            if _inside(path, opath) or _inside(opath, path):
                raise CostfilterError(f"{where}: sources {o.name} and {s.name} watch the same files ({o.path}, "
                                      f"{s.path}); give each its own folder, neither inside the other")
            for mine, label in ((done, "done"), (failed, "failed")):
                if _inside(mine, opath) or _inside(opath, mine):
                    raise CostfilterError(f"{where}: source {s.name}: its {label} folder {mine} and source {o.name}'s "
                                          f"folder {o.path} overlap (moved files would be found again)")
