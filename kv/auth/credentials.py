"""This module provides the secrets of authentication: bearer tokens
(:func:`new_token`, :func:`token_digest`), password hashes
(:func:`hash_password`, :func:`verify_password`) and the parsing of an
``Authorization`` header (:func:`parse_authorization`).

Tokens are ``kv_`` and 43 URL-safe characters (32 random bytes from
:mod:`secrets`); only their SHA-256 digest is stored.  Passwords are stored
as argon2id hashes (RFC 9106) by argon2-cffi with its default parameters
(RFC 9106's second recommended option: 64 MiB, 3 passes), so one check takes
tens of milliseconds: :mod:`kv.auth.directory` caches successful checks.
"""

import base64
import binascii
import hashlib
import hmac
import secrets
from typing import Optional, Tuple

import argon2

TOKEN_PREFIX = "kv_"
TOKEN_BYTES = 32
#: Characters of the token digest that make its public id (96 bits): the id
#: names the stored record, the whole digest is compared before it is used.
TOKEN_ID_CHARS = 24

_hasher = argon2.PasswordHasher()          # argon2id, RFC 9106 defaults
#: A hash no password matches: an unknown user name is checked against it, so
#: that it costs what a wrong password costs (API.md "Authentication").
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


def new_token() -> Tuple[str, str]:
    """A new bearer token.

    :returns: (secret str ``kv_...``, shown once; its digest str, 64 hex).
    """
    secret = TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)
    return secret, token_digest(secret)


def token_digest(secret: str) -> str:
    """The SHA-256 digest of a token's secret, 64 lower-case hex characters."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def token_id(digest: str) -> str:
    """The public id of the token with this digest (TOKEN_ID_CHARS hex)."""
    return digest[:TOKEN_ID_CHARS]


def same_digest(a: str, b: str) -> bool:
    """Compare two digests in constant time."""
    return hmac.compare_digest(a, b)


def hash_password(password: str) -> str:
    """The argon2id hash of ``password`` (PHC string format), salted."""
    return _hasher.hash(password)


def verify_password(stored_hash: Optional[str], password: str) -> bool:
    """Check ``password`` against ``stored_hash``; with None (no such user)
    check it against a hash nothing matches, so it costs the same.

    :returns: True when the password is right.
    """
    try:
        return _hasher.verify(stored_hash or _DUMMY_HASH, password) and stored_hash is not None
    except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
        return False


def parse_authorization(header: str) -> Tuple[str, Optional[Tuple[str, str]]]:
    """Parse an ``Authorization`` header.

    :param str header: the header's value (not empty).
    :returns: ("basic", (name, password)), ("bearer", (token, "")), or
        (scheme lower case, None) when the credentials are malformed or
        of a scheme this service does not take.
    """
    scheme, _, rest = header.strip().partition(" ")
    scheme, rest = scheme.lower(), rest.strip()
    if scheme == "bearer":
        return scheme, ((rest, "") if rest.startswith(TOKEN_PREFIX) and " " not in rest
                        else None)
    if scheme == "basic":
        try:
            decoded = base64.b64decode(rest, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            return scheme, None
        name, colon, password = decoded.partition(":")     # RFC 7617 section 2
        return scheme, ((name, password) if colon and name else None)
    return scheme, None
