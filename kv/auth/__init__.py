"""kv.auth: authentication and permissions (API.md "Authentication" and
"Permissions"), apart from HTTP.

:mod:`kv.auth.rule_syntax` is the grammar of rules (names, selectors, key
patterns, :func:`parse_rule`) and :mod:`kv.auth.rules` the pure permission
engine (their evaluation for a caller); :mod:`kv.auth.credentials` holds the secrets
(tokens, password hashes, the ``Authorization`` header); :mod:`kv.auth.directory`
keeps users, apps, tokens and rules in the reserved bucket ``_auth``.  The HTTP
layer (kv.http.access) asks them; none of them imports kv.http.
"""
