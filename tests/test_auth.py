"""Signed join tokens (server.auth) and ``avatar-server token``."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import jwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.__main__ import main
from server.core import protocol as P
from server.core.auth import MAX_TOKEN_CHARS, mint_token, verify_token

ROOT = Path(__file__).resolve().parents[1]
SECRET = "s3cret-" + "k" * 32  # >= 32 bytes: no InsecureKeyLengthWarning
OTHER = "other-" + "k" * 32
T0 = 1_767_225_600.0  # a fixed "now"


def refused(token, avatar="alice", room="lobby", *, secret=SECRET, now=T0 + 1, **kw) -> str:
    """verify_token must refuse with "unauthorized" / 1008; returns the message."""
    with pytest.raises(P.ProtocolError) as ei:
        verify_token(secret, token, avatar, room, now=now, **kw)
    assert ei.value.code == "unauthorized"
    assert ei.value.close_code == P.CLOSE_POLICY == 1008
    return str(ei.value)


def b64(obj) -> str:
    raw = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def claims_of(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


# -- mint and verify -----------------------------------------------------------------------


def test_error_code_is_in_the_protocol_table():
    assert P.ERROR_CODES["unauthorized"] == 1008


def test_mint_then_verify_a_player():
    tok = mint_token(SECRET, "alice", "lobby", ttl=60, now=T0)
    assert verify_token(SECRET, tok, "alice", "lobby", now=T0) is None
    assert verify_token(SECRET, tok, "alice", "lobby", now=T0 + 59.9) is None
    assert claims_of(tok) == {"sub": "alice", "room": "lobby", "iat": int(T0), "exp": int(T0) + 60}
    assert jwt.get_unverified_header(tok)["alg"] == "HS256"


def test_mint_then_verify_a_spectator():
    tok = mint_token(SECRET, None, "lobby", ttl=60, now=T0)
    assert "sub" not in claims_of(tok)  # spectators: no sub at all (never null)
    assert verify_token(SECRET, tok, None, "lobby", now=T0) is None


def test_default_now_is_the_clock():
    tok = mint_token(SECRET, "alice", "lobby", ttl=600)
    verify_token(SECRET, tok, "alice", "lobby")  # now = time.time() on both sides


def test_exp_is_rounded_up_so_the_token_lives_at_least_ttl():
    tok = mint_token(SECRET, "alice", "lobby", ttl=0.5, now=T0 + 0.75)
    c = claims_of(tok)
    assert (c["iat"], c["exp"]) == (int(T0), int(T0) + 2)
    verify_token(SECRET, tok, "alice", "lobby", now=T0 + 1.25)


def test_the_longest_valid_names_fit_in_a_hello():
    worst = "\U0001f600" * P.MAX_NAME  # 4 UTF-8 bytes, 12 as JSON \u escapes
    quote = '"' * P.MAX_NAME  # escaped in JSON
    for avatar, room in ((worst, worst), (quote, worst), ("a", "r")):
        tok = mint_token(SECRET, avatar, room, ttl=1e9, now=T0)
        assert len(tok) <= MAX_TOKEN_CHARS
        verify_token(SECRET, tok, avatar, room, now=T0)
        hello = P.Hello(room=room, avatar=avatar, token=tok)
        assert P.decode_client(P.encode_client(hello)).token == tok


@pytest.mark.parametrize("secret", ["", None])
def test_mint_refuses_an_empty_secret(secret):
    with pytest.raises(ValueError, match="secret"):
        mint_token(secret, "alice", "lobby", ttl=60)


@pytest.mark.parametrize("ttl", [0, -1, float("nan"), float("inf")])
def test_mint_refuses_a_bad_ttl(ttl):
    with pytest.raises(ValueError, match="ttl"):
        mint_token(SECRET, "alice", "lobby", ttl=ttl)


@pytest.mark.parametrize(("avatar", "room"), [("", "lobby"), ("a" * 65, "lobby"), ("a", "x\n")])
def test_mint_refuses_names_the_protocol_refuses(avatar, room):
    with pytest.raises(ValueError):
        mint_token(SECRET, avatar, room, ttl=60)


def test_verify_refuses_to_run_without_a_secret():
    tok = mint_token(SECRET, "alice", "lobby", ttl=60, now=T0)
    with pytest.raises(ValueError, match="secret"):
        verify_token("", tok, "alice", "lobby", now=T0)


# -- refusals ------------------------------------------------------------------------------


@pytest.mark.parametrize("token", [None, ""])
def test_missing(token):
    assert refused(token) == "token required"


@pytest.mark.parametrize("token", ["x", "a.b.c", "...", "\U0001f600", "e30." * 5, "!!.e30.x"])
def test_malformed(token):
    assert refused(token) == "token is malformed"


def test_signed_with_another_secret():
    tok = mint_token(OTHER, "alice", "lobby", ttl=60, now=T0)
    assert refused(tok) == "token signature is invalid"
    verify_token(OTHER, tok, "alice", "lobby", now=T0 + 1)  # fine with its own secret


def test_tampered_payload():
    tok = mint_token(SECRET, "alice", "lobby", ttl=60, now=T0)
    head, _, sig = tok.split(".")
    forged = f"{head}.{b64({**claims_of(tok), 'room': 'vip'})}.{sig}"
    assert refused(forged, room="vip") == "token signature is invalid"
    longer = f"{head}.{b64({**claims_of(tok), 'exp': int(T0) + 10**6})}.{sig}"
    assert refused(longer, now=T0 + 3600) == "token signature is invalid"


def test_tampered_signature():
    tok = mint_token(SECRET, "alice", "lobby", ttl=60, now=T0)
    head, body, sig = tok.split(".")
    flipped = ("A" if sig[0] != "A" else "B") + sig[1:]
    assert refused(f"{head}.{body}.{flipped}") == "token signature is invalid"
    assert refused(f"{head}.{body}.") == "token signature is invalid"


def test_alg_none_is_refused():
    claims = {"sub": "alice", "room": "lobby", "exp": int(T0) + 60}
    for alg in ("none", "None", "NONE"):
        tok = f"{b64({'alg': alg, 'typ': 'JWT'})}.{b64(claims)}."
        assert refused(tok) == "token is not signed with HS256"
    assert refused(jwt.encode(claims, None, algorithm="none")) == "token is not signed with HS256"
    no_alg = f"{b64({'typ': 'JWT'})}.{b64(claims)}.{b64(b'x' * 32)}"
    assert refused(no_alg) == "token is not signed with HS256"


@pytest.mark.parametrize("alg", ["HS384", "HS512"])
def test_other_hmac_algorithms_are_refused_even_with_the_right_secret(alg):
    claims = {"sub": "alice", "room": "lobby", "exp": int(T0) + 60}
    tok = jwt.encode(claims, SECRET + "x" * 32, algorithm=alg)  # long enough for HS512
    assert refused(tok, secret=SECRET + "x" * 32) == "token is not signed with HS256"


def test_expired():
    tok = mint_token(SECRET, "alice", "lobby", ttl=60, now=T0)
    verify_token(SECRET, tok, "alice", "lobby", now=T0 + 59.999)
    assert refused(tok, now=T0 + 60) == "token expired"
    assert refused(tok, now=T0 + 10**6) == "token expired"
    verify_token(SECRET, tok, "alice", "lobby", now=T0 + 65, leeway=10)  # clock skew allowed
    assert refused(tok, now=T0 + 70, leeway=10) == "token expired"


@pytest.mark.parametrize("exp", [None, "soon", True, [1], {"t": 1}, 1e400])
def test_exp_is_required_and_numeric(exp):
    claims = {"sub": "alice", "room": "lobby"} | ({} if exp is None else {"exp": exp})
    tok = jwt.encode(claims, SECRET, algorithm="HS256")
    assert refused(tok) in ("token has no valid expiry", "token is malformed")


def test_not_before():
    tok = jwt.encode(
        {"sub": "alice", "room": "lobby", "exp": int(T0) + 60, "nbf": int(T0) + 30},
        SECRET,
        algorithm="HS256",
    )
    assert refused(tok, now=T0 + 29) == "token is not yet valid"
    verify_token(SECRET, tok, "alice", "lobby", now=T0 + 30)


def test_wrong_room():
    tok = mint_token(SECRET, "alice", "lobby", ttl=60, now=T0)
    assert refused(tok, room="vip") == "token is for another room"
    assert refused(tok, room="Lobby") == "token is for another room"


def test_wrong_avatar():
    tok = mint_token(SECRET, "alice", "lobby", ttl=60, now=T0)
    assert refused(tok, avatar="bob") == "token is for another avatar"
    assert refused(tok, avatar="alice ") == "token is for another avatar"


def test_player_and_spectator_tokens_do_not_mix():
    player = mint_token(SECRET, "alice", "lobby", ttl=60, now=T0)
    spectator = mint_token(SECRET, None, "lobby", ttl=60, now=T0)
    assert refused(player, avatar=None) == "token is for a player, not a spectator"
    assert refused(spectator, avatar="alice") == "token is for a spectator, not a player"


@pytest.mark.parametrize("sub", [None, 7, ["alice"]])
def test_a_sub_that_is_not_a_string_is_refused(sub):
    tok = jwt.encode({"sub": sub, "room": "lobby", "exp": int(T0) + 60}, SECRET, algorithm="HS256")
    refused(tok, avatar=None)
    refused(tok, avatar="alice")


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_untrusted_text_only_ever_raises_protocol_error(token):
    with pytest.raises(P.ProtocolError) as ei:
        verify_token(SECRET, token, "alice", "lobby", now=T0)
    assert ei.value.code == "unauthorized"


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=8,
)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(st.sampled_from(["sub", "room", "exp", "nbf", "iat", "aud", "jti"]), JSON),
)
def test_correctly_signed_odd_claims_only_ever_raise_protocol_error(claims):
    tok = jwt.encode(claims, SECRET, algorithm="HS256")
    try:
        verify_token(SECRET, tok, "alice", "lobby", now=T0)
    except P.ProtocolError as e:
        assert e.code == "unauthorized"
    else:  # accepted: then it really was a valid token for alice in lobby
        assert claims["sub"] == "alice" and claims["room"] == "lobby"
        assert claims["exp"] > T0


# -- avatar-server token -------------------------------------------------------------------


def cli(capsys, *args: str) -> tuple[str, str]:
    assert main(["token", *args]) == 0
    out, err = capsys.readouterr()
    return out, err


def test_cli_prints_one_token_that_verifies(capsys, monkeypatch):
    monkeypatch.delenv("AVATAR_SECRET", raising=False)
    out, _ = cli(capsys, "--avatar", "alice", "--room", "lobby", "--secret", SECRET)
    assert out.count("\n") == 1 and out.endswith("\n")
    verify_token(SECRET, out.strip(), "alice", "lobby")
    c = claims_of(out.strip())
    assert c["exp"] - c["iat"] in (3600, 3601)  # the default ttl


def test_cli_secret_from_the_environment_and_ttl(capsys, monkeypatch):
    monkeypatch.setenv("AVATAR_SECRET", SECRET)
    out, _ = cli(capsys, "--avatar", "bob", "--room", "r", "--ttl", "90")
    tok = out.strip()
    verify_token(SECRET, tok, "bob", "r")
    c = claims_of(tok)
    assert c["exp"] - c["iat"] in (90, 91)
    refused(tok, "bob", "r", now=c["iat"] + 92)
    # --secret wins over the environment
    out, _ = cli(capsys, "--avatar", "bob", "--room", "r", "--secret", OTHER)
    verify_token(OTHER, out.strip(), "bob", "r")
    refused(out.strip(), "bob", "r", now=c["iat"])


def test_cli_spectator(capsys, monkeypatch):
    monkeypatch.setenv("AVATAR_SECRET", SECRET)
    out, _ = cli(capsys, "--spectator", "--room", "lobby")
    verify_token(SECRET, out.strip(), None, "lobby")
    refused(out.strip(), "alice", "lobby", now=None)


@pytest.mark.parametrize("env", [None, ""])
def test_cli_without_a_secret_exits_2(capsys, monkeypatch, env):
    if env is None:
        monkeypatch.delenv("AVATAR_SECRET", raising=False)
    else:
        monkeypatch.setenv("AVATAR_SECRET", env)
    with pytest.raises(SystemExit) as ei:
        main(["token", "--avatar", "alice", "--room", "lobby"])
    assert ei.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "AVATAR_SECRET" in err and "--secret" in err


@pytest.mark.parametrize(
    "args",
    [
        ["--room", "lobby"],  # neither --avatar nor --spectator
        ["--avatar", "a", "--spectator", "--room", "lobby"],  # both
        ["--avatar", "a"],  # no room
        ["--avatar", "a", "--room", "lobby", "--ttl", "0"],
        ["--avatar", "a", "--room", "lobby", "--ttl", "soon"],
        ["--avatar", "a" * 65, "--room", "lobby"],
    ],
)
def test_cli_bad_flags_exit_2(capsys, monkeypatch, args):
    monkeypatch.setenv("AVATAR_SECRET", SECRET)
    with pytest.raises(SystemExit) as ei:
        main(["token", *args])
    assert ei.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and "error" in err


def test_python_m_server_token():
    env = {**os.environ, "AVATAR_SECRET": SECRET}
    proc = subprocess.run(
        [sys.executable, "-m", "server", "token", "--avatar", "alice", "--room", "lobby"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    verify_token(SECRET, proc.stdout.strip(), "alice", "lobby")
