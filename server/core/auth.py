"""Signed join tokens: mint and verify the ``token`` of a ``hello``. Pure: no asyncio, no I/O.

A token is a JWT (RFC 7519) signed with HMAC-SHA256 (``HS256``) under a secret shared by
whoever issues tokens and the server. Its claims:

    sub    the avatar id; absent for a spectator token (never null)
    room   the room name
    exp    expiry, seconds since the epoch (integer); required
    iat    when it was issued (integer); informational, not checked

A token admits one avatar (or one spectator) to one room until it expires:

    token = mint_token(secret, "alice", "lobby", ttl=3600)     # the issuer
    verify_token(secret, hello.token, hello.avatar, hello.room)   # the server, on hello
    # -> None, or raises ProtocolError("unauthorized", ...): send the error, close 1008

Only ``HS256`` is accepted (never ``none``, nor another HMAC size, nor a public-key
algorithm). The secret should have at least 32 bytes (RFC 7518 section 3.2); a shorter one
works, but PyJWT warns (`jwt.InsecureKeyLengthWarning`). Any other JWT library can mint
tokens too, as long as it writes the claims above.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

import jwt

from server.core.messages import MAX_NAME, ProtocolError

ALGORITHM = "HS256"
ERROR_CODE = "unauthorized"  # the one error code for every refused token (close 1008)
MAX_TOKEN_CHARS = 1024  # the protocol's limit on a hello's "token"
MIN_SECRET_BYTES = 32  # recommended; shorter secrets make PyJWT warn


class _Utf8JSONEncoder(json.JSONEncoder):
    """Claims as UTF-8, not \\u escapes, so the longest valid names still fit in 1024 chars."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs["ensure_ascii"] = False
        super().__init__(**kwargs)


def _check_name(kind: str, name: str) -> None:
    if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME or not name.isprintable():
        raise ValueError(f"{kind} must be 1..{MAX_NAME} printable characters, got {name!r}")


def mint_token(
    secret: str, avatar: str | None, room: str, ttl: float, now: float | None = None
) -> str:
    """A token that admits `avatar` (None: a spectator) to `room` for `ttl` seconds from `now`.

    `now` is seconds since the epoch (default: `time.time()`); ``iat`` is `now` rounded down
    and ``exp`` is `now` + `ttl` rounded up, so the token lives at least `ttl` seconds.
    The result is at most `MAX_TOKEN_CHARS` characters, so it fits in a ``hello``.

    Raises ValueError for an empty secret, a `ttl` that is not a finite number > 0, or an
    avatar or room that the protocol would refuse (not 1..64 printable characters).
    """
    if not secret:
        raise ValueError("secret must not be empty")
    if not (isinstance(ttl, int | float) and math.isfinite(ttl) and ttl > 0):
        raise ValueError(f"ttl must be a finite number of seconds > 0, got {ttl!r}")
    if avatar is not None:
        _check_name("avatar", avatar)
    _check_name("room", room)
    t = time.time() if now is None else now
    claims: dict[str, Any] = {"room": room, "iat": math.floor(t), "exp": math.ceil(t + ttl)}
    if avatar is not None:
        claims["sub"] = avatar
    token = jwt.encode(claims, secret, algorithm=ALGORITHM, json_encoder=_Utf8JSONEncoder)
    if len(token) > MAX_TOKEN_CHARS:  # cannot happen with valid names; a guard all the same
        raise ValueError(f"token is {len(token)} characters, over {MAX_TOKEN_CHARS}")
    return token


def _refuse(message: str) -> ProtocolError:
    return ProtocolError(ERROR_CODE, message)


def _number(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def verify_token(
    secret: str,
    token: str | None,
    avatar: str | None,
    room: str,
    now: float | None = None,
    leeway: float = 0,
) -> None:
    """Check that `token` admits `avatar` (None: a spectator) to `room` at `now`; or raise.

    The caller passes the hello's fields as they are
    (``verify_token(secret, hello.token, hello.avatar, hello.room)``) and, on
    `ProtocolError`, sends ``error`` with ``e.code`` and ``str(e)`` and closes with
    ``e.close_code`` (1008). `now` is seconds since the epoch (default: `time.time()`);
    `leeway` is the seconds of clock skew to allow past ``exp`` (and before ``nbf``).

    Raises `ProtocolError` with code ``"unauthorized"`` — one code, with a message that
    says why — when the token is missing or empty, not a well-formed JWT, not signed
    with ``HS256``, signed with another secret or altered, without a numeric ``exp``,
    expired (``now >= exp + leeway``), not yet valid (an ``nbf`` after ``now + leeway``),
    for another room, for another avatar, or for a player when `avatar` is None or a
    spectator when it is not. Untrusted `token` never makes it raise anything else.

    Raises ValueError for an empty `secret`: a server without a secret must not call this.
    """
    if not secret:
        raise ValueError("secret must not be empty")
    if not token:
        raise _refuse("token required")
    if not isinstance(token, str):
        raise _refuse("token is malformed")
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],  # pinned: "none", HS512, RS256, ... are refused
            # Times are checked below against `now`; PyJWT still checks signature, the
            # types of "sub" and "jti", and refuses an "aud" (none is expected here).
            options={"verify_exp": False, "verify_nbf": False, "verify_iat": False},
        )
    except jwt.InvalidAlgorithmError:
        raise _refuse("token is not signed with HS256") from None
    except jwt.InvalidSignatureError:
        raise _refuse("token signature is invalid") from None
    except jwt.DecodeError:
        raise _refuse("token is malformed") from None
    except jwt.InvalidTokenError:  # the other claim errors (a non-string "sub", an "aud", ...)
        raise _refuse("token is invalid") from None
    except (ValueError, TypeError, RecursionError):  # belt and braces on hostile input
        raise _refuse("token is malformed") from None

    t = time.time() if now is None else now
    exp = claims.get("exp")
    if not _number(exp):
        raise _refuse("token has no valid expiry")
    if t >= exp + leeway:
        raise _refuse("token expired")
    nbf = claims.get("nbf")
    if nbf is not None and (not _number(nbf) or t < nbf - leeway):
        raise _refuse("token is not yet valid")
    if claims.get("room") != room:
        raise _refuse("token is for another room")
    sub = claims.get("sub")  # PyJWT has checked it is a string if present
    if avatar is None and sub is not None:
        raise _refuse("token is for a player, not a spectator")
    if avatar is not None and sub is None:
        raise _refuse("token is for a spectator, not a player")
    if sub != avatar:
        raise _refuse("token is for another avatar")
