"""This module provides the administration commands of ``kv`` (API.md
"Administration"): ``user``, ``app``, ``token``, ``rule``, ``whoami`` and
``check``, and :func:`add_parsers`, which adds them to the ``kv`` parser.

Each needs the ``admin`` verb (``whoami`` only valid credentials).  A
command is ``cmd_NAME(store, args) -> int``, as in :mod:`kvclient.commands`.
"""

import getpass
import sys

from kvclient.commands import EXIT_DENIED, EXIT_OK, EXIT_USAGE, print_json

VERBS = ("list", "read", "write", "admin")


def per_user_rules(app: str) -> list:
    """Sauropod's usual two rules for ``app`` (API.md "Permissions"): the
    app reads, writes and lists every bucket of its own, and each user only
    ``{app}:{user}``, and only through the app."""
    verbs = ["read", "write", "list"]
    return [{"effect": "allow", "principal": "app:" + app, "verbs": verbs,
             "bucket": app + ":*", "keys": "#"},
            {"effect": "allow", "principal": "user:*", "verbs": verbs,
             "bucket": app + ":${user}", "keys": "#", "via_app": app}]


def rule_text(rule: dict) -> str:
    """One rule as a line: ``r17 allow user:* read,write,list on notes:${user} # via_app notes``."""
    text = "%s %s %s %s on %s %s" % (rule.get("id", "-"), rule["effect"], rule["principal"],
                                     ",".join(rule["verbs"]), rule["bucket"], rule["keys"])
    return text + (" via_app %s" % rule["via_app"] if rule.get("via_app") else "")


def _same_rule(a: dict, b: dict) -> bool:
    fields = ("effect", "principal", "bucket", "keys")
    return (all(a.get(f) == b.get(f) for f in fields) and sorted(a["verbs"]) == sorted(b["verbs"])
            and (a.get("via_app") or None) == (b.get("via_app") or None))


def _new_password(args) -> str:
    """The new password: the first line of stdin with --password-stdin, else
    asked twice on the terminal."""
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("new password for %s: " % args.name)
        if getpass.getpass("again: ") != password:
            raise SystemExit("kv: the passwords differ")
    if not password:
        raise SystemExit("kv: an empty password")
    return password


def _done(args, doc: dict, text: str) -> int:
    if args.json:
        print_json(doc)
    else:
        print(text)
    return EXIT_OK


def _table(rows, header) -> None:
    """Print rows (tuples of str) in columns under ``header``."""
    rows = [tuple(header)] + [tuple("-" if c is None else str(c) for c in r) for r in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())


# users
def cmd_user_add(store, args) -> int:
    created = store.put_user(args.name, _new_password(args))
    return _done(args, {"user": args.name, "created": created},
                 "%s user %s" % ("created" if created else "replaced", args.name))


def cmd_user_passwd(store, args) -> int:
    disabled = bool(store.get_user(args.name).get("disabled"))
    store.put_user(args.name, _new_password(args), disabled=disabled)
    return _done(args, {"user": args.name}, "changed the password of %s" % args.name)


def cmd_user_disable(store, args) -> int:
    disabled = args.action == "disable"
    store.get_user(args.name)                  # NotFound (exit 1) rather than a new user
    store.put_user(args.name, None, disabled=disabled)
    return _done(args, {"user": args.name, "disabled": disabled},
                 "%s user %s" % ("disabled" if disabled else "enabled", args.name))


def cmd_user_rm(store, args) -> int:
    store.delete_user(args.name)
    return _done(args, {"deleted": args.name}, "deleted user %s" % args.name)


def cmd_user_ls(store, args) -> int:
    for name in store.users():
        _done(args, {"name": name}, name)
    return EXIT_OK


# apps
def cmd_app_add(store, args) -> int:
    created = store.put_app(args.name, args.description or "")
    lines, rules = ["%s app %s" % ("created" if created else "replaced", args.name)], []
    if args.per_user_buckets:
        existing = [r for p in ("app:" + args.name, "user:*") for r in store.rules(principal=p)]
        for rule in per_user_rules(args.name):
            same = [r for r in existing if _same_rule(r, rule)]
            rules.append(same[0] if same else store.add_rule(rule))
            lines.append(("rule %s" if same else "added rule %s") % rule_text(rules[-1]))
    return _done(args, {"app": args.name, "created": created, "rules": rules}, "\n".join(lines))


def cmd_app_rm(store, args) -> int:
    store.delete_app(args.name)
    return _done(args, {"deleted": args.name}, "deleted app %s" % args.name)


def cmd_app_ls(store, args) -> int:
    for name in store.apps():
        _done(args, {"id": name}, name)
    return EXIT_OK


# tokens
def cmd_token_create(store, args) -> int:
    token = store.create_token(args.principal, args.expires)
    if args.json:
        print_json(token)
    else:
        print(token["token"])
        print("id %s for %s, expires %s" % (token.get("id"), token.get("principal", args.principal),
                                            token.get("expires") or "never"))
        print("kv: the secret above is shown only this once", file=sys.stderr)
    return EXIT_OK


def cmd_token_ls(store, args) -> int:
    tokens = list(store.tokens(args.principal))
    if args.json:
        for token in tokens:
            print_json(token)
    else:
        _table([(t.get("id"), t.get("principal"), t.get("expires") or "never", t.get("created"),
                 t.get("last_used")) for t in tokens],
               ("ID", "PRINCIPAL", "EXPIRES", "CREATED", "LAST USED"))
    return EXIT_OK


def cmd_token_revoke(store, args) -> int:
    store.revoke_token(args.id)
    return _done(args, {"revoked": args.id}, "revoked token %s (refused everywhere within 30 s)"
                 % args.id)


# rules
def cmd_rule_add(store, args) -> int:
    verbs = args.verbs.split(",")
    unknown = [v for v in verbs if v not in VERBS]
    if unknown:
        print("kv: unknown verbs %s (known: %s)" % (",".join(unknown), ",".join(VERBS)),
              file=sys.stderr)
        return EXIT_USAGE
    rule = {"effect": args.effect, "principal": args.principal, "verbs": verbs,
            "bucket": args.selector, "keys": args.keys}
    if args.via_app:
        rule["via_app"] = args.via_app
    rule = store.add_rule(rule)
    return _done(args, rule, "added rule %s" % rule_text(rule))


def cmd_rule_ls(store, args) -> int:
    rules = list(store.rules(args.principal, args.selector))
    if args.json:
        for rule in rules:
            print_json(rule)
    else:
        _table([(r.get("id"), r["effect"], r["principal"], ",".join(r["verbs"]), r["bucket"],
                 r["keys"], r.get("via_app")) for r in rules],
               ("ID", "EFFECT", "PRINCIPAL", "VERBS", "BUCKET", "KEYS", "VIA APP"))
    return EXIT_OK


def cmd_rule_rm(store, args) -> int:
    store.delete_rule(args.id)
    return _done(args, {"deleted": args.id}, "deleted rule %s" % args.id)


# who and what
def cmd_whoami(store, args) -> int:
    me = store.whoami()
    if args.json:
        print_json(me)
        return EXIT_OK
    print(" ".join(me.get("principals") or ["anyone"]))
    for field in ("session_bucket", "token_id", "expires"):
        if me.get(field):
            print("%s: %s" % (field.replace("_", " "), me[field]))
    return EXIT_OK


def cmd_check(store, args) -> int:
    """Print the decision and the deciding rule; exit 0 when allowed, 1 when denied."""
    answer = store.check(args.principal, args.verb, args.target, args.key, app=args.app)
    if args.json:
        print_json(answer)
    else:
        rule = answer.get("rule")
        print("%s %s" % ("allowed" if answer["allowed"] else "denied",
                         "by rule %s" % rule_text(rule) if rule else "(no rule allows it)"))
    return EXIT_OK if answer["allowed"] else EXIT_DENIED


def add_parsers(sub, common) -> None:
    """Add the administration commands to the ``kv`` subparsers ``sub``;
    ``common`` is the parent parser of the options every command takes."""
    def group(name, help_text):
        parser = sub.add_parser(name, parents=[common], help=help_text, description=help_text)
        return parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(actions, name, run, help_text, *positionals):
        parser = actions.add_parser(name, parents=[common], help=help_text,
                                    description=help_text)
        for positional in positionals:            # "dest" or "dest=METAVAR"
            dest, _, metavar = positional.partition("=")
            parser.add_argument(dest, metavar=metavar or dest.upper())
        parser.set_defaults(run=run)
        return parser

    users = group("user", "manage users (needs admin)")
    for name, run, help_text in (("add", cmd_user_add, "create (or replace) a user"),
                                 ("passwd", cmd_user_passwd, "change a user's password")):
        p = action(users, name, run, help_text, "name")
        p.add_argument("--password-stdin", action="store_true",
                       help="read the password from the first line of stdin (else: asked twice)")
    action(users, "disable", cmd_user_disable, "stop a user's credentials working", "name")
    action(users, "enable", cmd_user_disable, "let a disabled user in again", "name")
    action(users, "rm", cmd_user_rm, "delete a user", "name")
    action(users, "ls", cmd_user_ls, "list the user names")

    apps = group("app", "manage applications (needs admin)")
    p = action(apps, "add", cmd_app_add, "create (or replace) an application", "name=ID")
    p.add_argument("--description", help="what the app is")
    p.add_argument("--per-user-buckets", action="store_true",
                   help="also add Sauropod's two rules: the app may read, write and list every "
                        "bucket ID:*, each user only ID:${user} and only through the app")
    action(apps, "rm", cmd_app_rm, "delete an application", "name=ID")
    action(apps, "ls", cmd_app_ls, "list the application ids")

    tokens = group("token", "manage tokens (needs admin)")
    p = action(tokens, "create", cmd_token_create,
               "issue a token; prints its secret (only this once) and its id", "principal")
    p.add_argument("--expires", help="expiry, RFC 3339 (e.g. 2027-01-01T00:00:00.000000Z); "
                                     "default never")
    p = action(tokens, "ls", cmd_token_ls, "list tokens (never their secrets)")
    p.add_argument("--principal", help="only this principal's (user:NAME or app:ID)")
    action(tokens, "revoke", cmd_token_revoke, "revoke a token", "id")

    rules = group("rule", "manage permission rules (needs admin)")
    p = action(rules, "add", cmd_rule_add, "add a rule, e.g. kv rule add allow user:bob "
               "read,list notes:alice 'shared/#'")
    p.add_argument("effect", choices=["allow", "deny"])
    p.add_argument("principal", help="user:NAME, app:ID, user:*, app:*, authenticated or anyone")
    p.add_argument("verbs", help="comma-separated: " + ",".join(VERBS))
    p.add_argument("selector", metavar="bucket",
                   help="a bucket name, APP:* or *; ${user} and ${app} are replaced")
    p.add_argument("keys", help="a key pattern: segments split on /, + one segment, final # any")
    p.add_argument("--via-app", help="only for requests that carry this app")
    p = action(rules, "ls", cmd_rule_ls, "list the rules (a table; --json for JSON lines)")
    p.add_argument("--principal", help="only this principal's rules")
    p.add_argument("--bucket", dest="selector", help="only the rules with this bucket selector")
    action(rules, "rm", cmd_rule_rm, "delete a rule", "id")

    p = sub.add_parser("whoami", parents=[common], help="who the credentials are")
    p.set_defaults(run=cmd_whoami)
    p = sub.add_parser("check", parents=[common],
                       help="how a request would be decided (exit 0 allowed, 1 denied)")
    p.add_argument("principal", help="user:NAME or app:ID")
    p.add_argument("verb", choices=VERBS)
    p.add_argument("target", metavar="bucket")
    p.add_argument("key")
    p.add_argument("--app", help="as this app's session of the user principal")
    p.set_defaults(run=cmd_check)
