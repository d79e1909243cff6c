"""This module provides what the controller's processor checks of a route
class before its handler runs (API.md "Resources"): the query parameters
it declares, the methods it serves (405 with ``Allow``, 404 on an unknown
path) and the default guard of a route that declares none.

A route class declares ``PARAMETERS``: method -> the names its query may
hold (``format`` is defined everywhere; HEAD takes GET's); its keys are the
methods it serves.  Its ``guard(access, method)`` runs before its handler
and before any storage is read.
"""

import web

from kv.http.errors import HTTPProblem
from kv.http.request import query


def admin_only(access, _):
    """The guard of a route class without one: ``admin`` (default deny)."""
    access.require_admin()


def check_parameters(route, method: str) -> None:
    """Refuse a query parameter that the route does not define (a mistyped
    ``prefix`` must not list everything).  A method the class does not
    declare is left to its 404 or 405.

    :raises HTTPProblem: 400 ``unknown_parameter`` naming the first unknown one.
    """
    names = getattr(route, "PARAMETERS", {}).get("GET" if method == "HEAD" else method)
    if names is None:
        return
    for name in query():
        if name != "format" and name not in names:
            raise HTTPProblem(400, "unknown_parameter", "unknown query parameter %r%s" % (
                name, "; this route takes %s" % ", ".join(names) if names else
                "; this route takes none"))


def no_method(route, method: str) -> HTTPProblem:
    """The answer to a method the route does not serve: 405 with ``Allow``
    (the methods of its ``PARAMETERS``, HEAD with GET), or 404 when the
    route declares none (an unknown path), whatever the method."""
    methods = list(getattr(route, "PARAMETERS", ()))
    if not methods:
        return HTTPProblem(404, "not_found", "no resource at %s" % web.ctx.path)
    if "GET" in methods:
        methods.insert(methods.index("GET") + 1, "HEAD")
    return HTTPProblem(405, "method_not_allowed", "%s is not allowed here" % method,
                       [("Allow", ", ".join(methods))])
