"""Password hashing with argon2id (argon2-cffi)."""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

MIN_PASSWORD_LENGTH = 8


def new_hasher() -> PasswordHasher:
    """Return an argon2id hasher with the library's recommended parameters."""
    return PasswordHasher()


def hash_password(password: str, hasher: PasswordHasher | None = None) -> str:
    """Hash a password for a [[users]] entry."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValueError(f"password must be at least {MIN_PASSWORD_LENGTH} characters")
    return (hasher or new_hasher()).hash(password)


def verify_password(password_hash: str, password: str,
                    hasher: PasswordHasher | None = None) -> bool:
    """Return whether password matches the hash; malformed hashes never match."""
    try:
        return (hasher or new_hasher()).verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False
