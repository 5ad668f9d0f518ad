"""The web console under /console: account holders manage keys, money and usage; operators see accounts, holds,
deposits and upstream health. Server-rendered pages, a little JavaScript, nothing from a CDN, no build step."""

from __future__ import annotations

from core.console.app import Console  # noqa: F401
