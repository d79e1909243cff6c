"""This module provides the grammar of permission rules (API.md
"Permissions"): user names, app ids, bucket selectors and key patterns, and
:func:`parse_rule`, which validates a rule's JSON object into a
:class:`Rule` (its key pattern split once by :func:`compile_keys`).
:mod:`kv.auth.rules` evaluates them.  Nothing here does I/O.
"""

from typing import FrozenSet, NamedTuple, Optional, Tuple

from kv.errors import InvalidRequest

VERBS = ("list", "read", "write", "admin")
EFFECTS = ("allow", "deny")
MAX_USER_NAME_BYTES = 200
MAX_APP_ID_BYTES = 54        # "{app}:{user}" is then a bucket name of <= 255 bytes
MAX_BUCKET_BYTES = 255
MAX_KEY_PATTERN_BYTES = 512  # a key is at most 512 bytes (API.md "Keys and values")

_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._~-@+")
_BUCKET_CHARS = _NAME_CHARS | {":"}
_FIELDS = ("id", "effect", "principal", "verbs", "bucket", "keys", "via_app")
_SPECIAL_PRINCIPALS = ("user:*", "app:*", "authenticated", "anyone")
KEYS_ALL, KEYS_EXACT, KEYS_PREFIX, KEYS_GENERAL = range(4)  # key pattern kinds
#: Reserved names a rule may name as its exact bucket: scopes of the service
#: itself, not buckets (API.md "Metrics": ``read`` on ``_metrics`` may scrape
#: GET /metrics).  Only a rule naming one exactly reaches it (``*`` does not).
RESERVED_SCOPES = frozenset(("_metrics",))


def _check_name(value, what: str, max_bytes: int) -> str:
    if not isinstance(value, str):
        raise InvalidRequest("the %s must be a string" % what)
    if not value:
        raise InvalidRequest("the %s is empty" % what)
    if not _NAME_CHARS.issuperset(value):
        raise InvalidRequest("the %s %r has a character outside A-Z a-z 0-9 . _ ~ - @ +"
                             % (what, value))
    if len(value) > max_bytes:  # ASCII only, so characters are bytes
        raise InvalidRequest("the %s is %d bytes long; at most %d are allowed"
                             % (what, len(value), max_bytes))
    return value


def check_user_name(name: str) -> str:
    """Validate a user name and return it unchanged.

    :param str name: 1 to 200 bytes of ``A-Z a-z 0-9 . _ ~ - @ +`` (no ``:``,
        so ``user:{name}`` and the bucket ``{app}:{name}`` stay unambiguous).
    :returns: ``name``.
    :raises InvalidRequest: when it is not a string, empty, too long or holds
        another character.
    """
    return _check_name(name, "user name", MAX_USER_NAME_BYTES)


def check_app_id(app: str) -> str:
    """Validate an application id and return it unchanged.

    :param str app: 1 to 54 bytes of ``A-Z a-z 0-9 . _ ~ - @ +``, not starting
        with ``_``: the session bucket ``{app}:{user}`` (API.md "Buckets") is
        then a valid, unreserved bucket name of at most 255 bytes.
    :returns: ``app``.
    :raises InvalidRequest: when it is not a string, empty, too long, starts
        with ``_`` or holds another character.
    """
    _check_name(app, "app id", MAX_APP_ID_BYTES)
    if app.startswith("_"):
        raise InvalidRequest("the app id %r starts with '_' (its buckets would be reserved)" % app)
    return app


class Rule(NamedTuple):
    """One permission rule (API.md "Permissions"), validated by :func:`parse_rule`.

    ``effect`` is ``"allow"`` or ``"deny"``; ``principal`` is ``user:{name}``,
    ``app:{id}``, ``user:*``, ``app:*``, ``authenticated`` or ``anyone``;
    ``verbs`` a non-empty subset of :data:`VERBS`; ``bucket`` an exact name,
    ``{app}:*`` or ``*`` (``${user}``/``${app}`` allowed inside); ``keys`` a
    key pattern; ``via_app`` an app id or None.
    """
    id: str
    effect: str
    principal: str
    verbs: FrozenSet[str]
    bucket: str
    keys: str
    via_app: Optional[str] = None

    def doc(self) -> dict:
        """The JSON form of API.md: ``{"id", "effect", "principal", "verbs"
        (in :data:`VERBS` order), "bucket", "keys"}`` plus ``"via_app"`` when set."""
        doc = {"id": self.id, "effect": self.effect, "principal": self.principal,
               "verbs": [v for v in VERBS if v in self.verbs], "bucket": self.bucket,
               "keys": self.keys}
        if self.via_app is not None:
            doc["via_app"] = self.via_app
        return doc


def _bad(field: str, message: str) -> InvalidRequest:
    return InvalidRequest('rule field "%s": %s' % (field, message))


def _check_principal(principal) -> None:
    if principal in _SPECIAL_PRINCIPALS:
        return
    kind, colon, name = principal.partition(":") if isinstance(principal, str) else ("", "", "")
    if not colon or kind not in ("user", "app"):
        raise _bad("principal", "must be user:{name}, app:{id}, user:*, app:*, authenticated or anyone")
    try:
        (check_user_name if kind == "user" else check_app_id)(name)
    except InvalidRequest as e:
        raise _bad("principal", str(e)) from None


def _check_bucket_selector(selector) -> None:
    if not isinstance(selector, str) or not selector:
        raise _bad("bucket", "must be a non-empty string")
    if selector == "*" or selector in RESERVED_SCOPES:
        return
    plain = selector.replace("${user}", "u").replace("${app}", "a")
    if plain.endswith(":*"):
        app = plain[:-2]
        if (not app or not _NAME_CHARS.issuperset(app) or app.startswith("_")
                or len(app) > MAX_APP_ID_BYTES):
            raise _bad("bucket", "%r: before ':*' must stand an app id (or ${user}, ${app})" % selector)
    elif (not _BUCKET_CHARS.issuperset(plain) or plain.count(":") > 1 or plain.startswith("_")
          or len(plain) > MAX_BUCKET_BYTES):
        raise _bad("bucket", "%r is not '*', '{app}:*' or a bucket name (1 to 255 bytes of "
                   "A-Z a-z 0-9 . _ ~ - @ + with at most one ':', not starting with '_'; "
                   "${user} and ${app} may stand inside)" % selector)


def compile_keys(pattern) -> Tuple[int, str, tuple, bool, int]:
    """(kind, literal text, segments with None for '+', ends in '#', rank);
    a higher rank is more specific (API.md "Permissions", evaluation step 3)."""
    if not isinstance(pattern, str) or not pattern:
        raise _bad("keys", "must be a non-empty string")
    try:
        size = len(pattern.encode("utf-8"))
    except UnicodeEncodeError:
        raise _bad("keys", "is not valid UTF-8") from None
    if size > MAX_KEY_PATTERN_BYTES:
        raise _bad("keys", "is %d bytes long; at most %d are allowed" % (size, MAX_KEY_PATTERN_BYTES))
    if any(c < " " or c == "\x7f" for c in pattern):
        raise _bad("keys", "contains a control character")
    segments = pattern.split("/")
    has_hash = segments[-1] == "#"
    if has_hash:
        segments.pop()
    if "#" in segments:
        raise _bad("keys", "%r: '#' may only be the last segment" % pattern)
    plus = segments.count("+")
    rank = ((len(segments) - plus) << 20) | ((not has_hash) << 10) | (1023 - plus)
    segs = tuple(None if s == "+" else s for s in segments)
    literal = "/".join(segments)
    kind = KEYS_GENERAL if plus else KEYS_PREFIX if has_hash else KEYS_EXACT
    return (KEYS_ALL if not segs and has_hash else kind), literal, segs, has_hash, rank


def parse_rule(doc: dict, rule_id: str) -> Rule:
    """Validate a rule's JSON object (API.md "Permissions") and build its :class:`Rule`.

    :param dict doc: ``{"effect", "principal", "verbs", "bucket", "keys"}`` and
        optionally ``"via_app"`` (null is absent) and ``"id"`` (then equal to
        ``rule_id``).  Key patterns: segments split on ``/``; ``+`` and ``#``
        are wildcards only as a whole segment (``a+b`` is literal), ``#`` only
        as the last one; 1 to 512 bytes, no control character.
    :param str rule_id: the rule's id, given by the store.
    :returns: the :class:`Rule`.
    :raises InvalidRequest: naming the field, for an unknown or missing field,
        a wrong type, an unknown effect or verb, no verbs, a bad principal,
        bucket selector, key pattern or via_app, or ``admin`` with a bucket
        other than ``*`` or keys other than ``#`` (admin is only over ``*``
        and ``#`` in this version).
    """
    if not isinstance(doc, dict):
        raise InvalidRequest("a rule must be a JSON object")
    unknown = sorted(str(f) for f in doc if f not in _FIELDS)
    if unknown:
        raise _bad(unknown[0], "unknown field (the fields are %s)" % ", ".join(_FIELDS))
    for field in _FIELDS[1:6]:
        if field not in doc:
            raise _bad(field, "is required")
    if not isinstance(rule_id, str) or not rule_id:
        raise _bad("id", "must be a non-empty string")
    if doc.get("id", rule_id) != rule_id:
        raise _bad("id", "%r differs from the rule's id %r" % (doc["id"], rule_id))
    effect, principal, verbs = doc["effect"], doc["principal"], doc["verbs"]
    if effect not in EFFECTS:
        raise _bad("effect", "must be allow or deny")
    _check_principal(principal)
    if not isinstance(verbs, list) or not verbs:
        raise _bad("verbs", "must be a non-empty list of %s" % ", ".join(VERBS))
    unknown = [v for v in verbs if v not in VERBS]
    if unknown:
        raise _bad("verbs", "unknown verb %r (the verbs are %s)" % (unknown[0], ", ".join(VERBS)))
    _check_bucket_selector(doc["bucket"])
    compile_keys(doc["keys"])
    via_app = doc.get("via_app")
    if via_app is not None:
        try:
            check_app_id(via_app)
        except InvalidRequest as e:
            raise _bad("via_app", str(e)) from None
    if "admin" in verbs and (doc["bucket"] != "*" or doc["keys"] != "#"):
        raise _bad("verbs", "admin is only allowed with bucket '*' and keys '#' in this version")
    return Rule(rule_id, effect, principal, frozenset(verbs), doc["bucket"], doc["keys"], via_app)
