"""Basic auth of the HTTP endpoints: an unknown user costs one bcrypt check, as a known one
with a wrong password does, so the time of a refusal does not tell which user names exist."""

from __future__ import annotations

import base64

import bcrypt
import pytest

from wasmtop.web import _Auth

HASH = bcrypt.hashpw(b"secret", bcrypt.gensalt(rounds=4)).decode()


def header(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture
def checks(monkeypatch) -> list[bytes]:
    """The hashes bcrypt.checkpw is called with, in order."""
    calls: list[bytes] = []
    real = bcrypt.checkpw

    def counting(password: bytes, hashed: bytes) -> bool:
        calls.append(hashed)
        return real(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", counting)
    return calls


@pytest.mark.parametrize(
    "user, password, ok",
    [("prom", "secret", True), ("prom", "wrong", False), ("mallory", "secret", False)],
)
def test_each_check_of_a_user_and_password_runs_bcrypt_once(checks, user, password, ok):
    auth = _Auth({"prom": HASH})
    assert auth.check(header(user, password)) is ok
    assert len(checks) == 1


def test_an_unknown_user_is_checked_against_a_dummy_hash_at_the_users_cost(checks):
    auth = _Auth({"prom": HASH})
    assert auth.check(header("mallory", "secret")) is False
    (dummy,) = checks
    assert dummy != HASH.encode() and dummy.startswith(b"$2b$04$")


def test_a_good_pair_is_remembered_and_no_users_means_no_auth(checks):
    auth = _Auth({"prom": HASH})
    assert auth.check(header("prom", "secret")) and auth.check(header("prom", "secret"))
    assert len(checks) == 1  # the second time from the remembered HMAC
    assert _Auth({}).check(None) is True
    assert auth.check(None) is False and auth.check("Basic %%%") is False
