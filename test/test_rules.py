"""The permission engine (kv.auth.rules) against API.md "Permissions": rule
validation, the verbs table, specificity, variables, via_app, key patterns,
sessions (Sauropod's two rules), principals, reserved buckets, could_allow
and may_admin; and a randomized cross-check against a naive evaluator."""

import itertools
import random
import re
import unittest

from kv.auth import rules as rules_module
from kv.auth.rule_syntax import VERBS, Rule, check_app_id, check_user_name, parse_rule
from kv.auth.rules import Caller, Decision, RuleSet
from kv.errors import InvalidRequest

ANONYMOUS = Caller(None, None, False)
ALICE = Caller("alice", None, True)               # HTTP Basic or a user token
BOB = Caller("bob", None, True)
NOTES = Caller(None, "notes", True)               # an app token
OTHER = Caller(None, "other", True)
ALICE_IN_NOTES = Caller("alice", "notes", True)   # a session started by the app notes
BOB_IN_OTHER = Caller("bob", "other", True)


def rule(rule_id, text):
    """A rule from API.md's short form: ``allow app:notes read,write,list on notes:* # [via_app notes]``."""
    effect, principal, verbs, on, bucket, keys, *via = text.split()
    assert on == "on" and (not via or via[0] == "via_app"), text
    doc = {"effect": effect, "principal": principal, "verbs": verbs.split(","), "bucket": bucket,
           "keys": keys}
    if via:
        doc["via_app"] = via[1]
    return parse_rule(doc, rule_id)


def ruleset(*texts):
    return RuleSet(rule("r%d" % i, text) for i, text in enumerate(texts, 1))


SAUROPOD = ("allow app:notes read,write,list on notes:* #",
            "allow user:* read,write,list on notes:${user} # via_app notes")


class NamesTest(unittest.TestCase):
    def test_user_names(self):
        for name in ("alice", "alice@example.com", "a.b_c~d-e+f", "_x", "x" * 200):
            self.assertEqual(check_user_name(name), name)
        for name in ("", "x" * 201, "a:b", "a b", "ä", "a/b", "${user}", None, 5):
            with self.assertRaises(InvalidRequest, msg=repr(name)):
                check_user_name(name)

    def test_app_ids(self):
        self.assertEqual(check_app_id("n" * 54), "n" * 54)
        for app in ("", "n" * 55, "a:b", "_auth", "é", None):
            with self.assertRaises(InvalidRequest, msg=repr(app)):
                check_app_id(app)
        self.assertIn("54", str(self._error(check_app_id, "n" * 55)))

    def _error(self, function, *args):
        with self.assertRaises(InvalidRequest) as caught:
            function(*args)
        return caught.exception


class ParseRuleTest(unittest.TestCase):
    GOOD = {"effect": "allow", "principal": "user:*", "verbs": ["write", "list", "read"],
            "bucket": "notes:${user}", "keys": "#", "via_app": "notes"}

    def test_round_trip_with_verbs_in_table_order(self):
        r = parse_rule(dict(self.GOOD), "r17")
        self.assertEqual(r, Rule("r17", "allow", "user:*", frozenset(["read", "write", "list"]),
                                 "notes:${user}", "#", "notes"))
        self.assertEqual(r.doc(), {"id": "r17", "effect": "allow", "principal": "user:*",
                                   "verbs": ["list", "read", "write"], "bucket": "notes:${user}",
                                   "keys": "#", "via_app": "notes"})
        self.assertEqual(parse_rule(r.doc(), "r17"), r)
        plain = parse_rule(dict(self.GOOD, via_app=None), "r1")
        self.assertIsNone(plain.via_app)
        self.assertNotIn("via_app", plain.doc())

    def test_accepted_forms(self):
        for field, value in [("principal", "user:alice@example.com"), ("principal", "app:notes"),
                             ("principal", "app:*"), ("principal", "authenticated"),
                             ("principal", "anyone"), ("bucket", "*"), ("bucket", "notes:*"),
                             ("bucket", "${app}:*"), ("bucket", "${app}:${user}"),
                             ("bucket", "default"), ("bucket", "${user}"), ("bucket", "x" * 255),
                             ("keys", "a+b"), ("keys", "a#b/c"), ("keys", "+/+/#"), ("keys", "k" * 512),
                             ("keys", "ключ/#"), ("verbs", ["read", "read"])]:
            parse_rule(dict(self.GOOD, **{field: value}), "r1")
        r = parse_rule({"effect": "allow", "principal": "user:root", "verbs": ["admin"],
                        "bucket": "*", "keys": "#", "id": "r9"}, "r9")
        self.assertEqual(r.verbs, frozenset(["admin"]))

    def assertBad(self, field, doc, rule_id="r1"):
        with self.assertRaises(InvalidRequest, msg=repr(doc)) as caught:
            parse_rule(doc, rule_id)
        self.assertIn('"%s"' % field, str(caught.exception))
        self.assertEqual(caught.exception.code, "bad_request")

    def test_each_bad_field_is_named(self):
        bad = {"effect": ["maybe", "Allow", 1, None],
               "principal": ["user:", "user:a:b", "group:x", "app:_x", "app:" + "n" * 55, "user",
                             "everyone", 5, None],
               "verbs": ["read", [], ["read", "fly"], [1], None, {"read": True}],
               "bucket": ["", "_auth", "a:b:c", "x*", "*:*", ":*", "${foo}", "notes:${user}:*",
                          "_x:*", "x" * 256, "a b", 5, None],
               "keys": ["", "a/#/b", "#/#", "k" * 513, "a\x00b", "a\nb", "\ud800", 5, None],
               "via_app": ["", "a:b", "_x", 5, ["notes"]]}
        for field, values in bad.items():
            for value in values:
                self.assertBad(field, dict(self.GOOD, **{field: value}))

    def test_unknown_missing_and_id_fields(self):
        self.assertBad("owner", dict(self.GOOD, owner="x"))
        for field in ("effect", "principal", "verbs", "bucket", "keys"):
            doc = dict(self.GOOD)
            del doc[field]
            self.assertBad(field, doc)
        self.assertBad("id", dict(self.GOOD, id="r2"), "r1")
        self.assertBad("id", dict(self.GOOD), "")
        with self.assertRaises(InvalidRequest):
            parse_rule(["not", "an", "object"], "r1")

    def test_admin_only_over_star_and_hash(self):
        admin = dict(self.GOOD, principal="user:root", verbs=["admin"], bucket="*", keys="#")
        del admin["via_app"]
        parse_rule(admin, "r1")
        parse_rule(dict(admin, effect="deny"), "r1")
        self.assertBad("verbs", dict(admin, bucket="notes:*"))
        self.assertBad("verbs", dict(admin, keys="cfg/#"))
        self.assertBad("verbs", dict(admin, effect="deny", verbs=["read", "admin"], bucket="default"))


class VerbsTableTest(unittest.TestCase):
    """API.md: allow write => read, allow admin => all; deny read => write, deny any => admin."""

    def allowed(self, rules, verb, caller=ALICE):
        return rules.authorize(caller, verb, "default", "k").allowed

    def test_allow_covers(self):
        for listed, covered in [("list", {"list"}), ("read", {"read"}), ("write", {"read", "write"}),
                                ("admin", set(VERBS))]:
            rules = ruleset("allow user:alice %s on * #" % listed)
            self.assertEqual({v for v in VERBS if self.allowed(rules, v)}, covered, listed)
            self.assertEqual(rules.may_admin(ALICE).allowed, listed == "admin")

    def test_deny_covers(self):
        for listed, denied in [("list", {"list", "admin"}), ("read", {"read", "write", "admin"}),
                               ("write", {"write", "admin"}), ("admin", {"admin"})]:
            rules = ruleset("allow user:alice admin on * #", "deny user:alice %s on * #" % listed)
            self.assertEqual({v for v in VERBS if not self.allowed(rules, v)}, denied, listed)
            decision = rules.may_admin(ALICE)
            self.assertEqual(decision, Decision(False, rules.rules[1]), listed)

    def test_unknown_verb(self):
        with self.assertRaises(InvalidRequest):
            ruleset().authorize(ALICE, "delete", "default", "k")
        with self.assertRaises(InvalidRequest):
            ruleset().could_allow(ALICE, "delete", "default", "")


class SpecificityTest(unittest.TestCase):
    def decide(self, rules, key, bucket="default", caller=ALICE, verb="read"):
        decision = rules.authorize(caller, verb, bucket, key)
        return decision.allowed, decision.rule.id if decision.rule else None

    def test_no_candidate_is_a_default_denial(self):
        self.assertEqual(ruleset().authorize(ALICE, "read", "default", "k"), Decision(False, None))
        rules = ruleset("allow user:bob read on default #", "allow user:alice read on other #")
        self.assertEqual(rules.authorize(ALICE, "read", "default", "k"), Decision(False, None))
        self.assertEqual(len(rules), 2)

    def test_deny_on_a_narrower_key_pattern_beats_allow_on_a_wider_one(self):
        rules = ruleset("allow user:alice read,write on default #",
                        "deny user:alice read on default secret/#")
        self.assertEqual(self.decide(rules, "secret/x"), (False, "r2"))
        self.assertEqual(self.decide(rules, "secret"), (False, "r2"))
        self.assertEqual(self.decide(rules, "secret/x", verb="write"), (False, "r2"))
        self.assertEqual(self.decide(rules, "secretx"), (True, "r1"))
        self.assertEqual(self.decide(rules, "public"), (True, "r1"))

    def test_allow_on_an_exact_bucket_beats_deny_on_app_star_which_beats_star(self):
        rules = ruleset("deny user:* read on notes:* #", "allow user:alice read on notes:alice cfg",
                        "allow authenticated read on * #", "allow user:* read on notes:${user} #")
        self.assertEqual(self.decide(rules, "k", "notes:alice"), (True, "r4"))
        self.assertEqual(self.decide(rules, "cfg", "notes:alice"), (True, "r2"))
        self.assertEqual(self.decide(rules, "k", "notes:bob"), (False, "r1"))
        self.assertEqual(self.decide(rules, "k", "notes:bob", caller=BOB), (True, "r4"))
        self.assertEqual(self.decide(rules, "k", "other:alice"), (True, "r3"))
        # The bucket ranks first: an exact bucket with "#" beats "*" with a literal key.
        rules = ruleset("deny user:alice read on * k", "allow user:alice read on default #")
        self.assertEqual(self.decide(rules, "k"), (True, "r2"))

    def test_key_pattern_ranks(self):
        # More literal segments first.
        rules = ruleset("deny user:alice read on default a/#", "allow user:alice read on default a/+/c")
        self.assertEqual(self.decide(rules, "a/b/c"), (True, "r2"))
        self.assertEqual(self.decide(rules, "a/b/d"), (False, "r1"))
        # Then without "#" before with it.
        rules = ruleset("allow user:alice read on default a/b/#", "deny user:alice read on default a/b")
        self.assertEqual(self.decide(rules, "a/b"), (False, "r2"))
        self.assertEqual(self.decide(rules, "a/b/c"), (True, "r1"))
        # Then fewer "+" before more.
        for first, second in (("allow", "deny"), ("deny", "allow")):
            rules = ruleset("%s user:alice read on default a/+/#" % first,
                            "%s user:alice read on default a/+/+/#" % second)
            self.assertEqual(self.decide(rules, "a/b/c"), (first == "allow", "r1"))

    def test_ties_deny_and_principals_do_not_rank(self):
        rules = ruleset("allow user:alice read on default #", "deny anyone read on default #",
                        "allow authenticated read on default #")
        self.assertEqual(self.decide(rules, "k"), (False, "r2"))
        self.assertEqual(self.decide(rules, "k", caller=ANONYMOUS), (False, "r2"))

    def test_the_reported_rule_is_the_lowest_id_among_the_deciding(self):
        rules = RuleSet([rule("r10", "allow user:alice read on default #"),
                         rule("r2", "allow user:* read on default #"),
                         rule("r1", "allow user:alice read on * #"),
                         rule("r30", "deny user:alice read on default k"),
                         rule("r4", "deny authenticated read on default k")])
        self.assertEqual(self.decide(rules, "j"), (True, "r2"))
        self.assertEqual(self.decide(rules, "k"), (False, "r4"))


class MemoTest(unittest.TestCase):
    """Decisions no key pattern took part in are remembered per (caller, verb, bucket)."""

    def test_only_key_free_decisions_are_remembered_and_the_memo_is_bounded(self):
        rules = ruleset("allow user:alice read on default #", "deny user:alice read on default secret/#",
                        "allow user:* read on notes:${user} #")
        for key in ("a", "secret/x", "b"):
            self.assertEqual(rules.authorize(ALICE, "read", "default", key).allowed, key != "secret/x")
        self.assertEqual(rules.authorize(ALICE, "read", "notes:alice", "x"), Decision(True, rules.rules[2]))
        self.assertEqual(rules.authorize(Caller("alice", None, True), "read", "notes:alice", "y"),
                         Decision(True, rules.rules[2]))
        self.assertFalse(rules.authorize(BOB, "read", "notes:alice", "x").allowed)
        self.assertEqual(set(rules._memo), {(ALICE, "read", "notes:alice"), (BOB, "read", "notes:alice")})
        for i in range(rules_module._MEMO_ENTRIES + 10):
            rules.authorize(ALICE, "read", "notes:%d" % i, "k")
        self.assertLessEqual(len(rules._memo), rules_module._MEMO_ENTRIES)


class VariablesAndViaAppTest(unittest.TestCase):
    def test_user_variable(self):
        rules = ruleset("allow user:* read on notes:${user} #")
        self.assertTrue(rules.authorize(ALICE, "read", "notes:alice", "k").allowed)
        self.assertFalse(rules.authorize(ALICE, "read", "notes:bob", "k").allowed)
        self.assertTrue(rules.authorize(BOB, "read", "notes:bob", "k").allowed)

    def test_app_variable_in_the_app_part_and_in_exact_names(self):
        rules = ruleset("allow app:* read on ${app}:* #", "allow app:* write on ${app}:${app} #")
        self.assertTrue(rules.authorize(NOTES, "read", "notes:alice", "k").allowed)
        self.assertFalse(rules.authorize(NOTES, "read", "other:alice", "k").allowed)
        self.assertTrue(rules.authorize(OTHER, "read", "other:alice", "k").allowed)
        self.assertTrue(rules.authorize(NOTES, "write", "notes:notes", "k").allowed)
        self.assertFalse(rules.authorize(NOTES, "write", "notes:alice", "k").allowed)
        rules = ruleset("allow user:* read on ${user}:* #")
        self.assertTrue(rules.authorize(ALICE, "read", "alice:x", "k").allowed)
        self.assertFalse(rules.authorize(ALICE, "read", "alicex:x", "k").allowed)

    def test_a_variable_the_request_lacks_does_not_match(self):
        rules = ruleset("allow user:* read on notes:${app} #", "allow app:* read on notes:${user} #",
                        "allow authenticated read on ${user}:* #")
        self.assertFalse(rules.authorize(ALICE, "read", "notes:", "k").allowed)
        self.assertFalse(rules.authorize(ALICE, "read", "notes:${app}", "k").allowed)
        self.assertFalse(rules.authorize(NOTES, "read", "notes:", "k").allowed)
        self.assertFalse(rules.authorize(NOTES, "read", "${user}:x", "k").allowed)
        # A session has both: the user half takes ${app}, the app half ${user}.
        self.assertTrue(rules.authorize(Caller("notes", "notes", True), "read", "notes:notes", "k").allowed)

    def test_via_app(self):
        rules = ruleset("allow user:* read on default # via_app notes", "allow app:* read on default #")
        self.assertFalse(rules.authorize(ALICE, "read", "default", "k").allowed)
        self.assertTrue(rules.authorize(ALICE_IN_NOTES, "read", "default", "k").allowed)
        self.assertFalse(rules.authorize(Caller("alice", "other", True), "read", "default", "k").allowed)
        rules = ruleset("allow app:* read on default # via_app notes")
        self.assertTrue(rules.authorize(NOTES, "read", "default", "k").allowed)
        self.assertFalse(rules.authorize(OTHER, "read", "default", "k").allowed)


class KeyPatternTest(unittest.TestCase):
    def matches(self, pattern, keys):
        rules = ruleset("allow anyone read on default %s" % pattern)
        return [k for k in keys if rules.authorize(ANONYMOUS, "read", "default", k).allowed]

    def test_patterns(self):
        keys = ["cfg", "cfg/", "cfg/a", "cfg/a/b", "cfgx", "cfgx/a", "xcfg", "a", "a/b", "a/",
                "a/b/c", "a+b", "axb", "/", "a//b"]
        self.assertEqual(self.matches("cfg/#", keys), ["cfg", "cfg/", "cfg/a", "cfg/a/b"])
        self.assertEqual(self.matches("#", keys), keys)
        self.assertEqual(self.matches("+/#", keys), keys)
        self.assertEqual(self.matches("a/+", keys), ["a/b", "a/"])
        self.assertEqual(self.matches("+", keys), ["cfg", "cfgx", "xcfg", "a", "a+b", "axb"])
        self.assertEqual(self.matches("a/+/b", keys), ["a//b"])
        self.assertEqual(self.matches("+/b/#", keys), ["a/b", "a/b/c"])
        self.assertEqual(self.matches("a/b", keys), ["a/b"])
        self.assertEqual(self.matches("a+b", keys), ["a+b"])
        self.assertEqual(self.matches("cfg", keys), ["cfg"])


class SessionTest(unittest.TestCase):
    """Sauropod: a session needs the app and the user allowed."""

    def test_sauropods_two_rules(self):
        rules = ruleset(*SAUROPOD)
        for verb in ("read", "write", "list"):
            self.assertEqual(rules.authorize(ALICE_IN_NOTES, verb, "notes:alice", "todo/1"),
                             Decision(True, rules.rules[1]))
        self.assertEqual(rules.authorize(ALICE_IN_NOTES, "read", "notes:bob", "k"), Decision(False, None))
        self.assertFalse(rules.authorize(ALICE, "read", "notes:alice", "k").allowed)
        self.assertTrue(rules.authorize(NOTES, "read", "notes:bob", "k").allowed)
        self.assertFalse(rules.authorize(Caller("alice", "other", True), "read", "notes:alice", "k").allowed)
        self.assertFalse(rules.authorize(ALICE_IN_NOTES, "admin", "notes:alice", "k").allowed)

    def test_the_denying_half_is_reported(self):
        rules = ruleset(*SAUROPOD, "deny app:notes read on notes:alice secret/#",
                        "deny user:alice write on notes:* #")
        self.assertEqual(rules.authorize(ALICE_IN_NOTES, "read", "notes:alice", "secret/1"),
                         Decision(False, rules.rules[2]))
        self.assertTrue(rules.authorize(ALICE_IN_NOTES, "read", "notes:alice", "public").allowed)
        # The user's exact-bucket allow outranks its own deny on notes:*.
        self.assertTrue(rules.authorize(ALICE_IN_NOTES, "write", "notes:alice", "k").allowed)
        self.assertFalse(ruleset(SAUROPOD[1]).authorize(ALICE_IN_NOTES, "read", "notes:alice", "k").allowed)


class PrincipalsTest(unittest.TestCase):
    def test_anyone_authenticated_and_named_principals(self):
        rules = ruleset("allow anyone read on public #", "allow authenticated list on public #",
                        "allow user:* write on public #", "allow app:* write on shared #",
                        "allow user:bob list on default #", "allow app:notes list on default #")
        for caller, read, listing, write in [(ANONYMOUS, True, False, False), (ALICE, True, True, True),
                                             (NOTES, True, True, False),
                                             (Caller(None, None, True), True, True, False)]:
            self.assertEqual([rules.authorize(caller, v, "public", "k").allowed
                              for v in ("read", "list", "write")], [read, listing, write], caller)
        self.assertFalse(rules.authorize(ALICE, "write", "shared", "k").allowed)
        self.assertTrue(rules.authorize(OTHER, "write", "shared", "k").allowed)
        self.assertTrue(rules.authorize(BOB, "list", "default", "k").allowed)
        self.assertFalse(rules.authorize(ALICE, "list", "default", "k").allowed)
        self.assertTrue(rules.authorize(NOTES, "list", "default", "k").allowed)
        self.assertFalse(rules.authorize(OTHER, "list", "default", "k").allowed)
        self.assertFalse(rules.authorize(Caller("notes", None, True), "list", "default", "k").allowed)

    def test_reserved_buckets_are_always_denied(self):
        rules = ruleset("allow anyone admin on * #")
        self.assertTrue(rules.authorize(ANONYMOUS, "read", "default", "k").allowed)
        for bucket in ("_auth", "_", "_x:y"):
            self.assertEqual(rules.authorize(ALICE, "read", bucket, "k"), Decision(False, None))
            self.assertFalse(rules.could_allow(ALICE, "list", bucket, ""))
        self.assertTrue(rules.may_admin(ANONYMOUS).allowed)


class MayAdminTest(unittest.TestCase):
    def test_only_star_and_hash_rules_decide(self):
        rules = ruleset("allow user:root admin on * #", "deny user:root read on default #",
                        "deny authenticated write on * cfg/#", "allow app:ops admin on * # via_app ops")
        self.assertEqual(rules.may_admin(Caller("root", None, True)), Decision(True, rules.rules[0]))
        self.assertFalse(rules.authorize(Caller("root", None, True), "read", "default", "k").allowed)
        self.assertEqual(rules.may_admin(ALICE), Decision(False, None))
        self.assertEqual(rules.may_admin(ANONYMOUS), Decision(False, None))
        self.assertTrue(rules.may_admin(Caller(None, "ops", True)).allowed)
        self.assertFalse(rules.may_admin(Caller("root", "notes", True)).allowed)
        rules = ruleset("allow user:root admin on * #", "deny user:* list on * #")
        self.assertEqual(rules.may_admin(Caller("root", None, True)), Decision(False, rules.rules[1]))


class CouldAllowTest(unittest.TestCase):
    def prefixes(self, rules, caller, bucket, prefixes, verb="list"):
        return [p for p in prefixes if rules.could_allow(caller, verb, bucket, p)]

    def test_exact_bucket_and_prefixes_ending_mid_segment(self):
        rules = ruleset("allow user:alice list on default cfg/#", "allow user:alice list on default a/+/c")
        prefixes = ["", "c", "cf", "cfg", "cfg/", "cfg/x/y", "cfgx", "d", "a", "a/", "a/x", "a/x/",
                    "a/x/c", "a/x/cd", "a/x/c/", "a/x/d", "b"]
        self.assertEqual(self.prefixes(rules, ALICE, "default", prefixes),
                         ["", "c", "cf", "cfg", "cfg/", "cfg/x/y", "a", "a/", "a/x", "a/x/", "a/x/c"])
        self.assertEqual(self.prefixes(rules, ALICE, "other", prefixes), [])
        self.assertEqual(self.prefixes(rules, BOB, "default", prefixes), [])
        self.assertEqual(self.prefixes(ruleset("allow user:alice read on * +/#"), ALICE, "x", prefixes,
                                       "read"), prefixes)

    def test_app_star_and_star(self):
        rules = ruleset("allow user:* list on notes:${user} #", "allow user:alice read on shared:x k",
                        "allow user:bob list on other:* #")
        self.assertTrue(rules.could_allow(ALICE, "list", "notes:*", ""))
        self.assertTrue(rules.could_allow(ALICE, "list", "*", "x"))
        self.assertFalse(rules.could_allow(ALICE, "list", "other:*", ""))
        self.assertFalse(rules.could_allow(ALICE, "list", "note:*", ""))
        self.assertTrue(rules.could_allow(ALICE, "read", "shared:*", "k"))
        self.assertFalse(rules.could_allow(ALICE, "read", "shared:*", "j"))
        self.assertFalse(rules.could_allow(ALICE, "read", "share:*", "k"))
        self.assertTrue(rules.could_allow(BOB, "list", "other:*", ""))
        self.assertTrue(rules.could_allow(BOB, "list", "other:x", ""))
        self.assertFalse(rules.could_allow(BOB, "list", "default", ""))
        self.assertFalse(rules.could_allow(ANONYMOUS, "list", "*", ""))

    def test_verbs_via_app_sessions_and_denies(self):
        rules = ruleset(*SAUROPOD)
        self.assertTrue(rules.could_allow(ALICE_IN_NOTES, "list", "notes:alice", ""))
        self.assertFalse(rules.could_allow(ALICE_IN_NOTES, "list", "notes:bob", ""))
        self.assertTrue(rules.could_allow(ALICE_IN_NOTES, "list", "notes:*", ""))
        self.assertTrue(rules.could_allow(ALICE_IN_NOTES, "list", "*", ""))
        self.assertFalse(rules.could_allow(ALICE, "list", "notes:alice", ""))
        self.assertFalse(rules.could_allow(ALICE_IN_NOTES, "admin", "notes:alice", ""))
        rules = ruleset("allow user:alice write on default #", "deny user:alice read on default #")
        self.assertTrue(rules.could_allow(ALICE, "read", "default", ""))  # conservative: denies ignored
        self.assertFalse(rules.could_allow(ALICE, "list", "default", ""))


# -- randomized cross-check against a naive evaluator written from API.md -----

PRINCIPALS = ["user:alice", "user:bob", "user:*", "app:notes", "app:*", "authenticated", "anyone"]
SELECTORS = ["*", "notes:*", "other:*", "${app}:*", "${user}:*", "default", "notes:alice",
             "notes:${user}", "${user}", "${app}:${user}", "notes:notes"]
PATTERNS = ["#", "a/#", "cfg/#", "+", "a/+", "+/a", "a/cfg", "cfg", "+/#", "a/+/#", "cfgx/+", "+/+"]
CALLERS = [ANONYMOUS, ALICE, BOB, NOTES, OTHER, ALICE_IN_NOTES, BOB_IN_OTHER, Caller("alice", "other", True)]
BUCKETS = ["default", "notes:alice", "notes:bob", "notes:notes", "other:alice", "other:bob",
           "alice", "alice:x", "notes:"]
SEGMENTS = ["a", "cfg", "cfgx", ""]
KEYS = sorted({"/".join(p) for n in (1, 2) for p in itertools.product(SEGMENTS, repeat=n)} - {""}
              | {"a/a/a", "cfg/a/cfgx", "a/cfg/x"})
COVERS = {"allow": {"list": {"list"}, "read": {"read"}, "write": {"write", "read"}, "admin": set(VERBS)},
          "deny": {"list": {"list", "admin"}, "read": {"read", "write", "admin"},
                   "write": {"write", "admin"}, "admin": {"admin"}}}


def naive_authorize(rules, caller, verb, bucket, key, admin_only=False):
    if bucket.startswith("_"):
        return Decision(False, None)
    halves = []
    if caller.user:
        halves.append({"user:" + caller.user, "user:*", "authenticated", "anyone"})
    if caller.app:
        halves.append({"app:" + caller.app, "app:*", "authenticated", "anyone"})
    if not halves:
        halves.append({"authenticated", "anyone"} if caller.authenticated else {"anyone"})
    decisions = []
    for principals in halves:
        candidates = []
        for r in rules:
            if (r.principal not in principals or (r.via_app and r.via_app != caller.app)
                    or verb not in set().union(*(COVERS[r.effect][v] for v in r.verbs))
                    or (admin_only and (r.bucket, r.keys) != ("*", "#"))):
                continue
            selector = r.bucket
            if "${user}" in selector and not caller.user or "${app}" in selector and not caller.app:
                continue
            selector = selector.replace("${user}", caller.user or "").replace("${app}", caller.app or "")
            if selector == bucket:
                bucket_rank = 3
            elif selector.endswith(":*") and bucket.startswith(selector[:-1]):
                bucket_rank = 2
            elif selector == "*":
                bucket_rank = 1
            else:
                continue
            segments = r.keys.split("/")
            regex = "/".join("[^/]*" if s == "+" else re.escape(s) for s in segments
                             if s != "#" or len(segments) == 1)
            if segments[-1] == "#":
                regex = ".*" if len(segments) == 1 else regex + "(/.*)?"
            if re.fullmatch(regex, key, re.S):
                literal = sum(s not in "+#" for s in segments)
                candidates.append(((bucket_rank, literal, segments[-1] != "#", -segments.count("+")), r))
        top = max((rank for rank, _ in candidates), default=None)
        deciding = [r for rank, r in candidates if rank == top]
        denies = [r for r in deciding if r.effect == "deny"]
        chosen = min(denies or deciding, key=lambda r: (len(r.id), r.id), default=None)
        decisions.append(Decision(bool(deciding) and not denies, chosen))
    return next((d for d in decisions if not d.allowed), decisions[0])


class RandomizedCrossCheckTest(unittest.TestCase):
    def test_authorize_may_admin_and_could_allow_agree_with_a_naive_evaluator(self):
        randomness = random.Random(20240601)
        for trial in range(12):
            docs = []
            for i in range(randomness.randint(1, 14)):
                doc = {"effect": randomness.choice(["allow", "allow", "deny"]),
                       "principal": randomness.choice(PRINCIPALS),
                       "verbs": randomness.sample(["list", "read", "write"], randomness.randint(1, 2)),
                       "bucket": randomness.choice(SELECTORS), "keys": randomness.choice(PATTERNS)}
                if randomness.random() < 0.1:
                    doc.update(verbs=["admin"], bucket="*", keys="#")
                if randomness.random() < 0.2:
                    doc["via_app"] = "notes"
                docs.append(parse_rule(doc, "r%d" % randomness.randint(1, 40)))
            docs = list({r.id: r for r in docs}.values())
            rules = RuleSet(docs)
            for caller in CALLERS:
                self.assertEqual(rules.may_admin(caller),
                                 naive_authorize(docs, caller, "admin", "x", "k", admin_only=True))
                for verb in VERBS:
                    allowed = set()
                    for bucket in BUCKETS:
                        for key in KEYS:
                            decision = rules.authorize(caller, verb, bucket, key)
                            self.assertEqual(decision, naive_authorize(docs, caller, verb, bucket, key),
                                             (trial, docs, caller, verb, bucket, key))
                            if decision.allowed:
                                allowed.add((bucket, key))
                    queries = BUCKETS + ["notes:*", "other:*", "alice:*", "x:*", "*"]
                    for query, prefix in itertools.product(queries, {k[:n] for k in KEYS
                                                                      for n in range(len(k) + 1)}):
                        if any((query == "*" or b == query or query.endswith(":*")
                                and b.startswith(query[:-1])) and k.startswith(prefix)
                               for b, k in allowed):
                            self.assertTrue(rules.could_allow(caller, verb, query, prefix),
                                            (docs, caller, verb, query, prefix))
