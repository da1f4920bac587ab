"""Secrets: the masked :class:`Secret` value, and where the signer key and the CoinGecko API key
are read from.

Secrets never come from the TOML file: only from a file named in it (``*_file`` keys), from
``$CREDENTIALS_DIRECTORY`` (systemd ``LoadCredential=``) or from the environment, in that order.
A key file must not be open to its group or others. No error ever echoes a secret.
"""

from __future__ import annotations

import os
import shlex
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Final

import attrs

from daemon.config.masking import MASK

SIGNER_KEY_ENV: Final = "DRIFTD_SIGNER_KEY"
COINGECKO_KEY_ENV: Final = "DRIFTD_COINGECKO_API_KEY"
SIGNER_CREDENTIAL: Final = "signer-key"
COINGECKO_CREDENTIAL: Final = "coingecko-api-key"
_CREDENTIALS_DIRECTORY_ENV: Final = "CREDENTIALS_DIRECTORY"
FORBIDDEN_SECRET_KEYS: Final = {
    # A secret written into the file → the key that names a file holding it instead.
    "signer.key": "signer.key_file",
    "signer.private_key": "signer.key_file",
    "prices.coingecko_api_key": "prices.coingecko_api_key_file",
}
_SECP256K1_ORDER: Final = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_KEY_FILE_FORBIDDEN_MODE: Final = 0o077


@attrs.frozen(repr=False)
class Secret:
    """A secret value (private key, API key). Never printed, logged or stored."""

    value: str = attrs.field(repr=False)

    def __repr__(self) -> str:
        return f"Secret('{MASK}')"

    def __str__(self) -> str:
        return MASK

    def reveal(self) -> str:
        """The secret itself; call only where it is used (signing, an HTTP header)."""
        return self.value


@attrs.frozen
class Secrets:
    """Secrets resolved from files, systemd credentials or the environment. Never printed."""

    signer_key: Secret | None = None
    coingecko_api_key: Secret | None = None


def private_key_bytes(text: str) -> bytes:
    """The 32 bytes of a hex secp256k1 private key (``0x`` optional).

    Raises ValueError saying what is wrong, never echoing the text (it is a key, or most of one).
    """
    digits = text[2:] if text[:2].lower() == "0x" else text
    if len(digits) != 64:
        raise ValueError(f"must be 64 hex digits (32 bytes), got {len(digits)} characters")
    if not all(c in "0123456789abcdefABCDEF" for c in digits):
        raise ValueError("must be 64 hex digits (32 bytes), got other characters")
    if not 0 < int(digits, 16) < _SECP256K1_ORDER:
        raise ValueError("must be between 1 and the secp256k1 group order - 1")
    return bytes.fromhex(digits)


def load_secrets(
    signer_key_file: str, coingecko_api_key_file: str, env: Mapping[str, str]
) -> tuple[Secrets, list[str]]:
    """The secrets, and the problems found reading them (each naming the key to fix)."""
    problems: list[str] = []
    signer_key: Secret | None = None
    try:
        resolved = _resolve_secret(
            signer_key_file, SIGNER_CREDENTIAL, SIGNER_KEY_ENV, env, "signer key"
        )
    except ValueError as exc:
        problems.append(f"signer.key_file: {exc}")
    else:
        if resolved is not None:
            signer_key, origin = resolved
            try:
                private_key_bytes(signer_key.reveal())
            except ValueError as exc:
                where = SIGNER_KEY_ENV if origin.startswith("$") else "signer.key_file"
                problems.append(f"{where}: {origin} is not a valid secp256k1 private key: {exc}")
    api_key: Secret | None = None
    try:
        resolved = _resolve_secret(
            coingecko_api_key_file,
            COINGECKO_CREDENTIAL,
            COINGECKO_KEY_ENV,
            env,
            "CoinGecko API key",
        )
    except ValueError as exc:
        problems.append(f"prices.coingecko_api_key_file: {exc}")
    else:
        api_key = None if resolved is None else resolved[0]
    return Secrets(signer_key=signer_key, coingecko_api_key=api_key), problems


def _resolve_secret(
    key_file: str, credential: str, env_name: str, env: Mapping[str, str], what: str
) -> tuple[Secret, str] | None:
    """The secret and where it came from (for error messages), or None when not set."""
    if key_file:
        return _read_file_secret(Path(key_file), what, private=True), f"{what} file {key_file!r}"
    credentials_dir = env.get(_CREDENTIALS_DIRECTORY_ENV)
    if credentials_dir and (Path(credentials_dir) / credential).is_file():
        path = Path(credentials_dir) / credential
        return _read_file_secret(path, what, private=False), f"systemd credential {str(path)!r}"
    if env.get(env_name, "").strip():
        return Secret(env[env_name].strip()), f"${env_name}"
    return None


def _read_file_secret(path: Path, what: str, *, private: bool) -> Secret:
    """The stripped content of ``path``. With ``private`` the file must not be open to its group
    or others (systemd credentials are exempt: systemd made them, and only for this service)."""
    try:
        with path.open(encoding="utf-8") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            if private and mode & _KEY_FILE_FORBIDDEN_MODE:
                # Refused before a byte is read; the path and mode are not secret.
                raise ValueError(
                    f"{what} file {str(path)!r} is readable or writable by group or others "
                    f"(mode {stat.S_IMODE(mode):04o}); restrict it with: "
                    f"chmod 600 {shlex.quote(str(path))}"
                )
            text = handle.read().strip()
    except OSError as exc:
        # The path is not secret; the content is never part of an error.
        raise ValueError(f"cannot read {what} file {str(path)!r}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{what} file {str(path)!r} is not UTF-8 text") from None
    if not text:
        raise ValueError(f"{what} file {str(path)!r} is empty")
    return Secret(text)
