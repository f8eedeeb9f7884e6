"""The operator console at ``/ui``: overview, events and their trail, dead letters, the template
playground and the running config, behind the admin token.

* ``pages``: the routes and handlers (server-rendered HTML, Jinja2 templates in ``templates/``).
* ``session``: how the browser holds the token (a signed HttpOnly cookie) and CSRF protection.
* ``masking``: the running config with every secret masked.
* ``static/``: one stylesheet and one small script, served by the bridge (no CDN, no build step).
"""

from __future__ import annotations

from bridge.ui.pages import routes

__all__ = ["routes"]
