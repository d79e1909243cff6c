"""This module provides the permission engine: rules, their validation and
their evaluation, as API.md "Permissions" defines them.

:func:`parse_rule` turns a rule's JSON object into a :class:`Rule`;
:class:`RuleSet` compiles a set of rules once and answers
:meth:`RuleSet.authorize` (one verb on one key of one bucket),
:meth:`RuleSet.could_allow` (may a listing show anything under a prefix) and
:meth:`RuleSet.may_admin`.  The model joins Sauropod's key / bucket /
application permission levels and DistKV's path ACLs (``+`` one segment, a
final ``#`` any number of them).  Nothing here does I/O or knows HTTP; the
service evaluates on every request, so rules are indexed by principal, then
by bucket kind, key patterns are split once, no regex is on the way, and a
decision that no key pattern took part in is remembered per (caller, verb,
bucket).
"""

from typing import Dict, FrozenSet, Iterable, List, NamedTuple, Optional, Tuple

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
# The verbs a rule of each effect covers, per listed verb (API.md, the verbs row):
# allow write => read, allow admin => all; deny read => write, deny anything => admin.
_ALLOW_COVERS = {"list": ("list",), "read": ("read",), "write": ("write", "read"), "admin": VERBS}
_DENY_COVERS = {"list": ("list", "admin"), "read": ("read", "write", "admin"),
                "write": ("write", "admin"), "admin": ("admin",)}
_ALL, _EXACT, _PREFIX, _GENERAL = range(4)  # key pattern kinds
_MEMO_ENTRIES = 16384  # decisions a RuleSet remembers (see RuleSet.authorize)
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


def _compile_keys(pattern) -> Tuple[int, str, tuple, bool, int]:
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
    kind = _GENERAL if plus else _PREFIX if has_hash else _EXACT
    return (_ALL if not segs and has_hash else kind), literal, segs, has_hash, rank


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
    _compile_keys(doc["keys"])
    via_app = doc.get("via_app")
    if via_app is not None:
        try:
            check_app_id(via_app)
        except InvalidRequest as e:
            raise _bad("via_app", str(e)) from None
    if "admin" in verbs and (doc["bucket"] != "*" or doc["keys"] != "#"):
        raise _bad("verbs", "admin is only allowed with bucket '*' and keys '#' in this version")
    return Rule(rule_id, effect, principal, frozenset(verbs), doc["bucket"], doc["keys"], via_app)


class Caller(NamedTuple):
    """Who makes a request: ``user`` (a user name, or None), ``app`` (an app id,
    or None) and ``authenticated`` (any valid credentials; False: anonymous).
    A session has both ``user`` and ``app``; a user or app implies authenticated."""
    user: Optional[str]
    app: Optional[str]
    authenticated: bool


class Decision(NamedTuple):
    """``allowed`` and the ``rule`` that decided (None for a denial by default)."""
    allowed: bool
    rule: Optional[Rule]


_DEFAULT_DENY = Decision(False, None)


class _Compiled:
    """A rule ready to evaluate: what it covers, its key pattern split once."""
    __slots__ = ("rule", "allow", "covers", "via", "kind", "lit", "lit_slash", "segs", "hash",
                 "rank", "order", "decision")

    def __init__(self, rule: Rule, order: int):
        self.rule, self.order, self.via = rule, order, rule.via_app
        self.allow = rule.effect == "allow"
        covers = _ALLOW_COVERS if self.allow else _DENY_COVERS
        self.covers = frozenset(v for verb in rule.verbs for v in covers[verb])
        self.kind, self.lit, self.segs, self.hash, self.rank = _compile_keys(rule.keys)
        self.lit_slash = self.lit + "/"
        self.decision = Decision(self.allow, rule)

    def could_match_prefix(self, pre: List[str]) -> bool:
        """True when some key starting with the prefix whose '/'-split is
        ``pre`` (last element: a segment's beginning) matches the pattern."""
        segs, n = self.segs, len(self.segs)
        for i in range(len(pre) - 1):
            if i >= n:
                return self.hash
            if segs[i] is not None and segs[i] != pre[i]:
                return False
        if len(pre) > n:
            return self.hash
        return segs[len(pre) - 1] is None or segs[len(pre) - 1].startswith(pre[-1])


class _Rules(list):
    """Compiled rules, most specific first; ``keyfree``: all of them on keys ``#``."""
    __slots__ = ("keyfree",)

    def __init__(self, rules: Iterable[_Compiled]):
        super().__init__(sorted(rules, key=lambda c: (-c.rank, c.order)))
        self.keyfree = all(c.kind == _ALL for c in self)


class _Group:
    """The rules of one principal (or of several merged), by bucket kind.

    ``levels[0]`` is (exact name -> rules, templated exact names), ``levels[1]``
    is (app -> rules of ``{app}:*``, templated apps); a template is ``(text,
    has ${user}, has ${app}, rules)``.  ``star`` holds the ``*`` rules and
    ``admin`` those of them on keys ``#``.  Every list is most specific first.
    """
    __slots__ = ("rules", "levels", "star", "admin")

    def __init__(self, compiled: List[_Compiled]):
        exact, exact_tpl, app, app_tpl, star = {}, {}, {}, {}, []
        for c in compiled:
            selector = c.rule.bucket
            if selector == "*":
                star.append(c)
                continue
            if selector.endswith(":*"):
                table, selector = (app_tpl if "$" in selector else app), selector[:-2]
            else:
                table = exact_tpl if "$" in selector else exact
            table.setdefault(selector, []).append(c)
        self.levels = tuple(
            ({k: _Rules(v) for k, v in table.items()},
             tuple((t, "${user}" in t, "${app}" in t, _Rules(v)) for t, v in sorted(templates.items())))
            for table, templates in ((exact, exact_tpl), (app, app_tpl)))
        self.rules, self.star = compiled, _Rules(star)
        self.admin = [c for c in self.star if c.kind == _ALL]


def _reaches(selector: str, bucket: str, user, app) -> bool:
    """Whether a bucket selector, variables replaced, matches some bucket of
    ``bucket`` (an exact name, ``{app}:*`` for some bucket of the app, or ``*``)."""
    for variable, value in (("${user}", user), ("${app}", app)):
        if variable in selector:
            if value is None:
                return False  # the request lacks the variable: no match
            selector = selector.replace(variable, value)
    if selector == "*" or bucket == "*":
        return True
    if bucket.endswith(":*"):
        return selector.startswith(bucket[:-1])
    return selector == bucket or (selector.endswith(":*") and bucket.startswith(selector[:-1]))


def _scan(lists, verb: str, app: Optional[str], key: str) -> Optional[_Compiled]:
    """The deciding rule among the candidates in ``lists`` (each most specific
    first), all of one bucket rank, or None: the highest key rank decides, a
    deny among equals wins, the lowest order among the deciding is reported."""
    best, deny, pick = -1, False, None
    for rules in lists:
        for c in rules:
            rank = c.rank
            if rank < best:
                break  # the rest of this list is less specific
            if verb not in c.covers or (c.via is not None and c.via != app):
                continue
            kind = c.kind
            if kind:  # not _ALL ("#")
                if kind == 1:  # _EXACT
                    if key != c.lit:
                        continue
                elif kind == 2:  # _PREFIX
                    if key != c.lit and not key.startswith(c.lit_slash):
                        continue
                else:  # _GENERAL
                    segs, ksegs = c.segs, key.split("/")
                    if len(ksegs) < len(segs) if c.hash else len(ksegs) != len(segs):
                        continue
                    if any(p is not None and p != s for p, s in zip(segs, ksegs)):
                        continue
            if rank > best:
                best, deny, pick = rank, not c.allow, c
            elif c.allow:
                if not deny and c.order < pick.order:
                    pick = c
            elif not deny or c.order < pick.order:
                deny, pick = True, c
    return pick


class RuleSet:
    """A compiled, immutable set of rules (API.md "Permissions").

    Rules are indexed by principal (a caller has at most four: ``user:{name}``
    or ``app:{id}``, ``user:*`` or ``app:*``, ``authenticated``, ``anyone``),
    then by bucket kind; evaluation looks only at those, not at every rule.
    The rule reported among equally specific deciding rules is the one with
    the lowest id, ids compared by (length, text) so that ``r2`` < ``r10``.
    A RuleSet never changes once built (a new one replaces it when the rules
    change), so threads share it; its memo is a dict, safe under the GIL.

    :param rules: the :class:`Rule` objects (ids unique), e.g. from :func:`parse_rule`.
    """

    def __init__(self, rules: Iterable[Rule]):
        self.rules = tuple(sorted(rules, key=lambda r: (len(r.id), r.id)))
        by_principal: Dict[str, List[_Compiled]] = {}
        for order, rule in enumerate(self.rules):
            by_principal.setdefault(rule.principal, []).append(_Compiled(rule, order))
        self._users = {p[5:]: _Group(cs) for p, cs in by_principal.items()
                       if p.startswith("user:") and p != "user:*"}
        self._apps = {p[4:]: _Group(cs) for p, cs in by_principal.items()
                      if p.startswith("app:") and p != "app:*"}

        def merged(*principals):  # principals shared by many callers: one group
            rules = [c for p in principals for c in by_principal.get(p, ())]
            return (_Group(rules),) if rules else ()
        self._user_common = merged("user:*", "authenticated", "anyone")
        self._app_common = merged("app:*", "authenticated", "anyone")
        self._authenticated = merged("authenticated", "anyone")
        self._anonymous = merged("anyone")
        self._memo: Dict[tuple, Decision] = {}  # (caller, verb, bucket) -> a key-free decision

    def __len__(self) -> int:
        return len(self.rules)

    def _halves(self, caller: Caller) -> Tuple[Tuple[_Group, ...], ...]:
        """The principal groups of each half of the caller (two for a session)."""
        halves = []
        if caller.user is not None:
            g = self._users.get(caller.user)
            halves.append((g,) + self._user_common if g else self._user_common)
        if caller.app is not None:
            g = self._apps.get(caller.app)
            halves.append((g,) + self._app_common if g else self._app_common)
        if not halves:
            halves.append(self._authenticated if caller.authenticated else self._anonymous)
        return halves

    def _decide(self, groups, verb: str, bucket: str, key: str, user, app) -> Tuple[Decision, bool]:
        """One half's decision, the most specific bucket rank with a candidate
        deciding, and whether it is the same for every key (all rules seen on ``#``)."""
        keyfree = True
        i = bucket.find(":")
        for level, name in enumerate((bucket, bucket[:i] if i > 0 else None)):
            if name is None:
                continue
            lists = []
            for g in groups:
                table, templates = g.levels[level]
                if name in RESERVED_SCOPES:   # no ${user} may become a scope's name
                    templates = ()
                rules = table.get(name)
                if rules:
                    lists.append(rules)
                    keyfree = keyfree and rules.keyfree
                for text, needs_user, needs_app, rules in templates:
                    if needs_user and user is None or needs_app and app is None:
                        continue  # the request lacks a variable: no match
                    if needs_user:
                        text = text.replace("${user}", user)
                    if needs_app:
                        text = text.replace("${app}", app)
                    if text == name:
                        lists.append(rules)
                        keyfree = keyfree and rules.keyfree
            if lists:
                pick = _scan(lists, verb, app, key)
                if pick is not None:
                    return pick.decision, keyfree
        if bucket in RESERVED_SCOPES:         # reached by its exact name only
            return _DEFAULT_DENY, keyfree
        for g in groups:
            keyfree = keyfree and g.star.keyfree
        pick = _scan([g.star for g in groups], verb, app, key)
        return _DEFAULT_DENY if pick is None else pick.decision, keyfree

    def authorize(self, caller: Caller, verb: str, bucket: str, key: str) -> Decision:
        """Decide whether ``caller`` may use ``verb`` on ``key`` of ``bucket``.

        API.md "Permissions", evaluation steps 1 to 4: the candidates match the
        caller's principals, cover the verb, match bucket, key and via_app; the
        most specific decide (bucket rank, then key pattern), a deny among them
        wins; no candidate is a denial.  A session needs both halves (user and
        app principals, same variables) allowed (Sauropod); its denial reports
        the denying half (the user's when both deny), its allowance the user
        half's rule.  A reserved bucket (``_``...) is always denied, but
        for the :data:`RESERVED_SCOPES`, which only rules naming them reach.  A
        decision that no key pattern took part in is remembered for (caller,
        verb, bucket): up to 16384 of them, then the memo starts again.

        :param Caller caller: who asks.
        :param str verb: one of :data:`VERBS`.
        :param str bucket: an exact bucket name (already validated).
        :param str key: the key, decoded from UTF-8.
        :returns: a :class:`Decision`; ``rule`` is None for a default denial.
        :raises InvalidRequest: for an unknown verb.
        """
        memo_key = (caller, verb, bucket)
        decision = self._memo.get(memo_key)
        if decision is not None:
            return decision
        if verb not in _ALLOW_COVERS:
            raise InvalidRequest("unknown verb %r (the verbs are %s)" % (verb, ", ".join(VERBS)))
        if bucket.startswith("_") and bucket not in RESERVED_SCOPES:
            return _DEFAULT_DENY
        keyfree = True
        for groups in self._halves(caller):
            half, half_keyfree = self._decide(groups, verb, bucket, key, caller.user, caller.app)
            keyfree, decision = keyfree and half_keyfree, decision or half
            if not half.allowed:
                decision = half
                break
        if keyfree:
            if len(self._memo) >= _MEMO_ENTRIES:
                self._memo.clear()
            self._memo[memo_key] = decision
        return decision

    def could_allow(self, caller: Caller, verb: str, bucket: str, prefix: str) -> bool:
        """Whether some rule of ``caller`` could allow ``verb`` on a key starting
        with ``prefix`` in some bucket of ``bucket``: a listing is 403 when not
        (API.md "Permissions", Answers).

        Conservative: denies are ignored, so True does not promise an allowed
        key; False promises that :meth:`authorize` allows no such (bucket, key).
        A session needs both halves to could-allow.

        :param Caller caller: who asks.
        :param str verb: one of :data:`VERBS`.
        :param str bucket: an exact bucket name, ``{app}:*`` (some bucket of the
            app: cross-bucket reads) or ``*`` (some bucket: ``GET /buckets``).
        :param str prefix: a key prefix, possibly ending inside a segment
            (``cfg`` is a prefix of ``cfg``, ``cfgx`` and ``cfg/a``); "" for all.
        :returns: bool.
        :raises InvalidRequest: for an unknown verb.
        """
        if verb not in _ALLOW_COVERS:
            raise InvalidRequest("unknown verb %r (the verbs are %s)" % (verb, ", ".join(VERBS)))
        if bucket.startswith("_"):
            return False
        user, app, pre = caller.user, caller.app, prefix.split("/")
        return all(any(c.allow and verb in c.covers and (c.via is None or c.via == app)
                           and _reaches(c.rule.bucket, bucket, user, app) and c.could_match_prefix(pre)
                           for g in groups for c in g.rules)
                   for groups in self._halves(caller))

    def may_admin(self, caller: Caller) -> Decision:
        """The decision for verb ``admin`` over bucket ``*`` and keys ``#``
        (API.md "Administration"): only rules on ``*`` and ``#`` are candidates;
        a deny of any verb there wins over an allow of admin; a session needs
        both halves.

        :param Caller caller: who asks.
        :returns: a :class:`Decision` (rule None for a default denial).
        """
        decision = None
        for groups in self._halves(caller):
            pick = _scan([g.admin for g in groups], "admin", caller.app, "")
            half = pick.decision if pick else _DEFAULT_DENY
            if not half.allowed:
                return half
            decision = decision or half
        return decision
