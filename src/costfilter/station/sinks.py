"""Where a station's results go: an MQTT broker (paho-mqtt), an HTTP hook (httpx) or a JSONL
file. A sink only sends one message and says whether it was acknowledged; ordering, retries,
back-off and the record of what was delivered are the outbox's (:mod:`.outbox`).

Every message carries ``key`` (the record id): delivery is at-least-once, so a consumer drops a
key it has already seen.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import ssl
import threading
from typing import Any

from ..errors import CostfilterError
from . import config as c


class SinkError(Exception):
    """The message was not acknowledged (the sink is down, refused it, or did not answer in time)."""


def _body(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()


class FolderSink:
    """Appends each message as one JSON line to a file, flushed to disk before it counts."""

    kind = "folder"

    def __init__(self, cfg: c.FolderSink):
        self.cfg, self.name, self.target = cfg, cfg.name, str(cfg.path)
        self._fh: Any = None

    def open(self) -> None:
        try:
            self.cfg.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.cfg.path, "ab")  # noqa: SIM115 - held open across messages, closed by close()
            # A kill mid-line leaves a partial last line: end it, so the next message starts its own.
            if self._fh.tell() and not _ends_with_newline(self.cfg.path):
                self._fh.write(b"\n")
        except OSError as exc:
            self._fh = None
            raise SinkError(f"{self.cfg.path}: {exc.strerror or exc}") from None

    def send(self, payload: dict[str, Any]) -> None:
        try:
            if self._fh is None:
                self.open()
            self._fh.write(_body(payload) + b"\n")
            self._fh.flush()
            os.fsync(self._fh.fileno())
        except OSError as exc:
            self.close()
            raise SinkError(f"{self.cfg.path}: {exc.strerror or exc}") from None

    def close(self) -> None:
        if self._fh is not None:
            try:
                self._fh.close()
            except OSError:
                pass
            self._fh = None


def _ends_with_newline(path: Any) -> bool:
    with open(path, "rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) == b"\n"


class WebhookSink:
    """POSTs each message as JSON; acknowledged by any 2xx answer. Headers: ``Idempotency-Key``
    (the record id) and, with a secret, ``X-Costfilter-Signature: sha256=<HMAC of the body>``."""

    kind = "webhook"

    def __init__(self, cfg: c.WebhookSink):
        import httpx

        self.cfg, self.name, self.target = cfg, cfg.name, cfg.url
        self.secret = os.environ[cfg.secret_env].encode() if cfg.secret_env else None
        self.client = httpx.Client(timeout=cfg.timeout_s, headers=cfg.headers)

    def open(self) -> None:
        pass

    def send(self, payload: dict[str, Any]) -> None:
        import httpx

        body = _body(payload)
        headers = {"Content-Type": "application/json", "Idempotency-Key": str(payload["key"])}
        if self.secret is not None:
            headers["X-Costfilter-Signature"] = "sha256=" + hmac.new(self.secret, body, hashlib.sha256).hexdigest()
        try:
            r = self.client.post(self.cfg.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise SinkError(f"{self.cfg.url}: {type(exc).__name__}: {exc}") from None
        if not 200 <= r.status_code < 300:
            raise SinkError(f"{self.cfg.url}: HTTP {r.status_code} {r.text[:120]!r}")

    def close(self) -> None:
        self.client.close()


class MqttSink:
    """Publishes each message to the station's topic; with QoS 1 or 2 it counts once the broker
    acknowledged it. The client reconnects by itself; while it is not connected nothing is
    published (the outbox keeps the messages), so a broker that comes back gets them in order."""

    kind = "mqtt"

    def __init__(self, cfg: c.MqttSink, station: str, backoff_max_s: float = c.BACKOFF_MAX_S):
        try:
            import paho.mqtt.client as mqtt
        except ImportError:
            raise CostfilterError("the MQTT sink needs paho-mqtt: pip install 'costfilter[station]'") from None
        self.cfg, self.name, self.target = cfg, cfg.name, f"mqtt://{cfg.host}:{cfg.port}/{cfg.topic}"
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=cfg.client_id or f"costfilter-{station}-{cfg.name}")
        if cfg.username:
            self.client.username_pw_set(cfg.username, os.environ[cfg.password_env] if cfg.password_env else None)
        if cfg.tls:
            try:
                self.client.tls_set(ca_certs=str(cfg.ca_file) if cfg.ca_file else None)
            except (OSError, ssl.SSLError) as exc:
                # OpenSSL's own error names no file: say which sink's CA file could not be read
                raise CostfilterError(f"{cfg.ca_file}: the MQTT sink {cfg.name!r} cannot read its ca_file "
                                      f"({getattr(exc, 'strerror', None) or exc})") from None
        self.client.reconnect_delay_set(min_delay=1, max_delay=max(1, round(backoff_max_s)))
        self.connected = threading.Event()
        self.last_error = "not connected yet"
        #: the broker's own reason for refusing the last connection (a wrong password), kept over
        #: the disconnect that follows it, which says only "Unspecified error"
        self.refused: str | None = None
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self._started = False

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any = None) -> None:
        if getattr(reason, "is_failure", False):
            self.refused = f"the broker refused the connection: {reason}"
            words = str(reason).lower()
            if self.cfg.username and ("author" in words or "password" in words):
                where = f"${self.cfg.password_env}" if self.cfg.password_env else "password_env (none is set)"
                self.refused += f" (user {self.cfg.username!r}: check the password in {where})"
            self.last_error = self.refused
            self.connected.clear()
        else:
            self.refused = None
            self.connected.set()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any = None) -> None:
        self.connected.clear()
        self.last_error = self.refused or f"disconnected ({reason})"

    def open(self) -> None:
        if not self._started:
            self._started = True
            self.client.connect_async(self.cfg.host, self.cfg.port, keepalive=30)
            self.client.loop_start()

    def send(self, payload: dict[str, Any]) -> None:
        self.open()
        if not self.connected.wait(timeout=0.5):
            raise SinkError(f"{self.cfg.host}:{self.cfg.port}: {self.last_error}")
        info = self.client.publish(self.cfg.topic, _body(payload), qos=self.cfg.qos)
        try:
            info.wait_for_publish(timeout=self.cfg.timeout_s)
        except (RuntimeError, ValueError) as exc:  # lost the connection, or paho's queue is full
            raise SinkError(f"{self.cfg.host}:{self.cfg.port}: {exc}") from None
        if not info.is_published():
            raise SinkError(f"{self.cfg.host}:{self.cfg.port}: no acknowledgement in {self.cfg.timeout_s:g} s")

    def close(self) -> None:
        if self._started:
            self.client.disconnect()
            self.client.loop_stop()


Sink = FolderSink | WebhookSink | MqttSink


def make_sink(cfg: c.MqttSink | c.WebhookSink | c.FolderSink, station: str, backoff_max_s: float = c.BACKOFF_MAX_S) -> Sink:
    """The sink a configuration entry describes."""
    if isinstance(cfg, c.MqttSink):
        return MqttSink(cfg, station, backoff_max_s)
    if isinstance(cfg, c.WebhookSink):
        return WebhookSink(cfg)
    return FolderSink(cfg)
