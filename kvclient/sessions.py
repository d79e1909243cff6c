"""This module provides :class:`SessionStore`, the store of an app+user
session (API.md "Authentication", Sessions), as
:meth:`kvclient.Store.start_session` returns it.
"""

from typing import Optional

from kvclient.errors import Unauthorized
from kvclient.store import Store

__all__ = ["SessionStore"]


class SessionStore(Store):
    """A store on a session's bucket with the session's token, as
    :meth:`Store.start_session` returns it (Sauropod's session).

    :ivar str bucket: the session's bucket, e.g. ``notes:alice@example.com``.
    :ivar str user: the user the session is for; ``app`` the app that started it.
    :ivar expires: when the session token expires (aware UTC datetime, or None).
    :ivar str token: the session's bearer token (``kv_...``), e.g. to hand the
        session to another process: ``kvclient.connect(url, token=..., bucket=...)``.

    :meth:`end` (also :meth:`close`, and leaving a ``with`` block) revokes
    the session token with ``DELETE /sessions/current``.
    """

    def __init__(self, url: str, timeout: float, retries: int, *, bucket: str, token: str,
                 user: str, app: Optional[str], expires=None):
        super().__init__(url, timeout, retries, bucket=bucket, token=token, app=app)
        self.user, self.expires, self.token, self.ended = user, expires, token, False

    def end(self) -> None:
        """End the session: ``DELETE /sessions/current`` (once; a session that
        is already revoked or expired counts as ended), then close the
        connections.  Later calls with this store get :class:`Unauthorized`.

        :raises Unavailable: when the service cannot be reached (the session
            then stays valid until it expires; call :meth:`end` again).
        """
        if not self.ended:
            try:
                self._request("DELETE", "/sessions/current", ok=(200, 204))
            except Unauthorized:
                pass
            self.ended = True
        super().close()

    def close(self) -> None:
        """The same as :meth:`end`."""
        self.end()
