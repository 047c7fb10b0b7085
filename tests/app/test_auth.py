"""Passwords: hashing round trip, wrong passwords and malformed hashes refused."""

from __future__ import annotations

from pages._lib.auth import hash_password, verify_password


def test_password_hash_round_trip():
    encoded = hash_password("correct horse")
    assert encoded.startswith("pbkdf2_sha256$") and "correct horse" not in encoded
    assert verify_password("correct horse", encoded)
    assert not verify_password("wrong", encoded)
    assert not verify_password("correct horse", "garbage")
    assert hash_password("x") != hash_password("x")  # salted
