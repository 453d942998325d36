"""A real Mosquitto broker on the loopback interface and a subscriber that records what arrives,
for the station tests and the station benchmark.

The broker keeps its state in a folder (persistence on, saved every second and on SIGTERM), so a
persistent subscriber's session and queued messages survive a broker restart, as on a plant's
broker. The subscriber de-duplicates by ``key`` as a consumer of at-least-once delivery must,
and counts the repeats it dropped.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from .service import LOOPBACK, free_port


def mosquitto_binary() -> str | None:
    """Debian installs the broker in /usr/sbin, which is not on every user's PATH."""
    return shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
                                              if os.access(p, os.X_OK)), None)


class Broker:
    """``mosquitto`` on ``127.0.0.1:port``; ``stop`` / ``start`` again on the same port."""

    def __init__(self, folder: Path, port: int | None = None, *, users: dict[str, str] | None = None,
                 tls: tuple[Path, Path] | None = None):
        """``users``: name → password (then no anonymous clients); ``tls``: (certificate, key) files."""
        binary = mosquitto_binary()
        if binary is None:
            raise RuntimeError("mosquitto is not installed (Debian: apt-get install mosquitto)")
        self.binary, self.folder, self.port = binary, folder, port or free_port()
        folder.mkdir(parents=True, exist_ok=True)
        self.conf = folder / "mosquitto.conf"
        # As root, mosquitto would switch to its own user, which cannot read a test's private folder.
        lines = [f"listener {self.port} {LOOPBACK}", f"user {getpass.getuser()}", "persistence true", f"persistence_location {folder}/",
                 "autosave_interval 1", f"log_dest file {folder}/mosquitto.log", "max_queued_messages 100000"]
        if users:
            passwords = folder / "passwords"
            passwords.write_text("")
            for name, password in users.items():
                subprocess.run([shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd", "-b", str(passwords),
                                name, password], check=True, capture_output=True)
            lines += ["allow_anonymous false", f"password_file {passwords}"]
        else:
            lines += ["allow_anonymous true"]
        if tls:
            lines += [f"certfile {tls[0]}", f"keyfile {tls[1]}"]
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Broker:
        self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {(self.folder / 'mosquitto.log').read_text()[-1000:]}")
            try:
                socket.create_connection((LOOPBACK, self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start in 20 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # saves its state, as a service manager stops it
            self.proc.wait(timeout=20)
        self.proc = None


class Subscriber:
    """A persistent QoS 1 subscription to ``topic``; ``messages`` in arrival order (repeats dropped)."""

    def __init__(self, port: int, topic: str, client_id: str = "line-consumer"):
        import paho.mqtt.client as mqtt

        self.topic = topic
        self.messages: list[dict[str, Any]] = []
        self.arrival: dict[str, float] = {}  # key → time.time() it arrived
        self.repeats = 0
        self._keys: set[str] = set()
        self._lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        self.client.reconnect_delay_set(1, 1)
        self.client.on_connect = lambda c, u, f, rc, p=None: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_disconnect = lambda *a: self.subscribed.clear()
        self.client.on_message = self._on_message
        self.client.connect(LOOPBACK, port, keepalive=10)
        self.client.loop_start()
        if not self.subscribed.wait(20):
            raise RuntimeError("the subscriber did not subscribe in 20 s")

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        payload = json.loads(msg.payload)
        with self._lock:
            if payload["key"] in self._keys:
                self.repeats += 1
                return
            self._keys.add(payload["key"])
            self.arrival[payload["key"]] = time.time()
            self.messages.append(payload)

    def wait_for(self, n: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.messages) >= n:
                return True
            time.sleep(0.05)
        return len(self.messages) >= n

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
