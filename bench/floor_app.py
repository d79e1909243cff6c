"""The floor under any web.py application, for ``make bench``: one route that
answers ``{}`` with no database, served by the same WSGI server command as
the service, so that the service's rate can be read against what web.py and
the server alone reach on the same machine in the same run."""

import web

web.config.debug = False


class Hello:
    def GET(self, key):
        return "{}"


def create_application():
    """The WSGI callable; named as controller's so the same command serves it."""
    return web.application(("/keys/(.*)", "Hello"), {"Hello": Hello}, autoreload=False).wsgifunc()
