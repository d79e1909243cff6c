"""This module provides the permission engine: the evaluation of rules, as
API.md "Permissions" defines it (their grammar and validation, with
:func:`~kv.auth.rule_syntax.parse_rule`, are in :mod:`kv.auth.rule_syntax`).

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

from typing import Dict, Iterable, List, NamedTuple, Optional, Tuple

from kv.auth.rule_syntax import KEYS_ALL, RESERVED_SCOPES, VERBS, Rule, compile_keys
from kv.errors import InvalidRequest

# The verbs a rule of each effect covers, per listed verb (API.md, the verbs row):
# allow write => read, allow admin => all; deny read => write, deny anything => admin.
_ALLOW_COVERS = {"list": ("list",), "read": ("read",), "write": ("write", "read"), "admin": VERBS}
_DENY_COVERS = {"list": ("list", "admin"), "read": ("read", "write", "admin"),
                "write": ("write", "admin"), "admin": ("admin",)}
_MEMO_ENTRIES = 16384  # decisions a RuleSet remembers (see RuleSet.authorize)


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
        self.kind, self.lit, self.segs, self.hash, self.rank = compile_keys(rule.keys)
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
        self.keyfree = all(c.kind == KEYS_ALL for c in self)


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
        self.admin = [c for c in self.star if c.kind == KEYS_ALL]


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
            if kind:  # not KEYS_ALL ("#")
                if kind == 1:  # KEYS_EXACT
                    if key != c.lit:
                        continue
                elif kind == 2:  # KEYS_PREFIX
                    if key != c.lit and not key.startswith(c.lit_slash):
                        continue
                else:  # KEYS_GENERAL
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
