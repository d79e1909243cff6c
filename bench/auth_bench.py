"""The cost of authentication in ``make bench``: the same service restarted
with ``[auth] enabled = true`` on the same data, measured with a bearer
token and with HTTP Basic (a password whose check the worker has cached),
against the auth-off rows of the same run.  The issue's budget: at most
20 us of extra CPU per request, at most 5% fewer requests per second.
"""

import os
import subprocess

import requests

import dbservers  # noqa: E402  (test helper, on sys.path through bench.py)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PASSWORD = "bench-password"


def _bootstrap(url, config):
    """Make an app token and a user allowed read and write on ``default``.

    :returns: (the app's bearer header, the user's Basic header).
    """
    admin = dbservers.bootstrap_admin(config, "bench", again=True)
    session = requests.Session()
    session.headers["Authorization"] = "Bearer " + admin
    session.put(url + "/auth/apps/bench", json={"description": "make bench"}).raise_for_status()
    session.put(url + "/auth/users/reader", json={"password": PASSWORD}).raise_for_status()
    for principal in ("app:bench", "user:reader"):
        session.post(url + "/auth/rules", json={
            "effect": "allow", "principal": principal, "verbs": ["read", "write", "list"],
            "bucket": "default", "keys": "#"}).raise_for_status()
    token = session.post(url + "/auth/tokens", json={"principal": "app:bench"}).json()["token"]
    basic = requests.auth._basic_auth_str("reader", PASSWORD)
    return "Bearer " + token, basic


def auth_runs(table, command, config, url, paths, seconds, reps, measure, children, wait):
    """Restart the service with authentication on and append its rows to ``table``.

    :returns: the running service process (the caller stops it).
    """
    auth_config = config + ".auth"
    with open(config) as f, open(auth_config, "w") as out:
        out.write(f.read() + "\n[auth]\nenabled = true\n")
    service = subprocess.Popen(command, cwd=ROOT, env=dict(os.environ, KV_CONFIG=auth_config),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait(url + "/health")
    bearer, basic = _bootstrap(url, auth_config)
    groups = {"service": lambda: children(service.pid)}
    print("service with [auth] enabled = true:", flush=True)
    table.append(measure("service GET, auth on (bearer token)", url, "get", paths, groups,
                         seconds, reps, authorization=bearer))
    table.append(measure("service PUT, auth on (bearer token)", url, "put", paths, groups,
                         seconds, reps, authorization=bearer))
    table.append(measure("service GET, auth on (Basic, cached)", url, "get", paths, groups,
                         seconds, reps, authorization=basic))
    return service


def auth_summary(by) -> str:
    """One line: requests per second and service CPU per request, auth on against off."""
    parts = []
    for verb, off, on in (("GET", "service GET uniform", "service GET, auth on (bearer token)"),
                          ("PUT", "service PUT", "service PUT, auth on (bearer token)"),
                          ("GET Basic", "service GET uniform",
                           "service GET, auth on (Basic, cached)")):
        a, b = by[off], by[on]
        cpu_off = a["cpu"]["service"] / a["rate"] * 1e6
        cpu_on = b["cpu"]["service"] / b["rate"] * 1e6
        parts.append("%s %+.1f%% req/s, %+.0f us CPU/request" % (
            verb, (b["rate"] / a["rate"] - 1) * 100, cpu_on - cpu_off))
    return "auth on vs off: " + "; ".join(parts)
