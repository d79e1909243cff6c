"""This module provides the HTML home page (API.md "HTML pages").  (Being built: answers 404 meanwhile.)"""

from kv.http.errors import HTTPProblem
from kv.http.negotiation import endpoint


class Home:
    """Placeholder route: 404 until the route is built."""

    @staticmethod
    def guard(access, method):
        pass

    @endpoint()
    def GET(self, *_):
        raise HTTPProblem(404, "not_found", "not built yet")
