"""The inspection service (``costfilter serve``): needs the ``serve`` extra."""

from __future__ import annotations

try:
    from .app import build_app, create_app
    from .store import HistoryStore
except ImportError as exc:  # fastapi / sqlalchemy missing
    from ..errors import CostfilterError

    raise CostfilterError(f"the service needs the serve extra: pip install 'costfilter[serve]' ({exc.name} missing)") from None

__all__ = ["HistoryStore", "build_app", "create_app"]
