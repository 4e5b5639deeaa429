"""The interactive app (``vessel-lens app``): explore any pixel's gradient in the browser.

Needs the optional ``[app]`` extra (Dash). Nothing runs at import: :func:`create_app` builds
the app from an :class:`AppConfig`, and :class:`Server` serves it on a local port.
"""

from vessel_lens.app.config import AppConfig
from vessel_lens.app.server import Server, create_app

__all__ = ["AppConfig", "Server", "create_app"]
