"""Outbound HTTP from the service: the configured URL, and only it.

No proxy from the environment (an `HTTPS_PROXY` set for something else would see every
alert and checkpoint) and no redirect (one could take a POST to another host, or to
plain http). Used by the alert webhook and by the checkpoint publisher for witnesses.
"""

from __future__ import annotations

import urllib.request
from typing import Any, Final

__all__ = ["DIRECT_OPENER"]


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect could take the POST elsewhere (another host, plain http): refused."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


DIRECT_OPENER: Final = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())
