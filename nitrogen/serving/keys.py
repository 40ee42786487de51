"""CURVE keys for the model server and its clients: create them once, load them at start-up.

Layout written by :func:`generate_keys`::

    <directory>/server.key                      server public key (give it to every client)
    <directory>/server.key_secret               server secret key (stays on the server, 0600)
    <directory>/clients/client-<i>.key          public keys the server accepts: its allow-list
    <directory>/client_secrets/client-<i>.key_secret   each client's secret key (0600)

``clients/`` holds public keys only. Files are written with :func:`nitrogen.atomic.atomic_path`, in
pyzmq's certificate format, each with its mode set before it appears under its name. Needs pyzmq,
never torch.

The allow-list is read once, when the server starts (:func:`load_allow_list`): every ``*.key`` file
in ``clients/`` must hold a valid public key, or the server refuses to start and names the file (a
single junk file would otherwise leave the authenticator with no keys at all, so that every client
goes unanswered). An empty allow-list starts, with a warning, and admits no one. The validated keys
are handed to the authenticator as an in-memory :class:`AllowList` (``configure_curve_callback``);
the authenticator never reads the folder itself. Changes to ``clients/`` take effect at the next
start: add or remove a key file, then restart the server (there is no reload on SIGHUP).
"""

from __future__ import annotations

import datetime
import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.utils import z85

from ..atomic import atomic_path

__all__ = [
    "AllowList",
    "ClientCurve",
    "CurveKeys",
    "KeyPaths",
    "generate_keys",
    "load_allow_list",
    "load_keypair",
    "load_public",
]

log = logging.getLogger(__name__)

SERVER_NAME = "server"
CLIENTS_DIR = "clients"
CLIENT_SECRETS_DIR = "client_secrets"
PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"
_Z85_KEY_LEN = 40  # a 32-byte CURVE key in Z85 text
_MAX_CERTIFICATE_BYTES = 64 * 1024  # a certificate is ~300 bytes; anything far bigger is not one
_SECRET_MODE = 0o600
_PUBLIC_MODE = 0o644

StrPath = str | os.PathLike[str]


@dataclass(frozen=True)
class KeyPaths:
    """Where :func:`generate_keys` put each file."""

    directory: Path
    server_public: Path
    server_secret: Path
    clients_dir: Path
    """The allow-list of client public keys, for the server's authenticator."""
    client_public: tuple[Path, ...]
    client_secret: tuple[Path, ...]


@dataclass(frozen=True)
class CurveKeys:
    """One CURVE keypair, both keys as 40-byte Z85 text (what pyzmq's socket options take)."""

    public: bytes
    secret: bytes

    def __repr__(self) -> str:  # never print the secret
        return f"CurveKeys(public={self.public!r}, secret=<hidden>)"


@dataclass(frozen=True)
class ClientCurve:
    """What a client needs for CURVE: its own keypair and the server's public key."""

    client: CurveKeys
    server_public: bytes

    @classmethod
    def from_files(cls, client_secret_file: StrPath, server_public_file: StrPath) -> ClientCurve:
        """Load ``client-<i>.key_secret`` and ``server.key`` (the server's secret file also works)."""
        return cls(load_keypair(client_secret_file), load_public(server_public_file))


def _client_name(index: int) -> str:
    return f"client-{index}"


def generate_keys(directory: StrPath, *, clients: int = 1) -> KeyPaths:
    """Create a server keypair and ``clients`` client keypairs under ``directory``.

    Clients are numbered from 1. Existing key files are never overwritten: if any target exists,
    :class:`FileExistsError` names it and nothing is written. Each file is written atomically
    (never seen half-written); secret files get mode 0600, public ones 0644.
    """
    if isinstance(clients, bool) or not isinstance(clients, int) or clients < 0:
        raise ValueError(f"clients must be a non-negative integer, got {clients!r}")
    root = Path(directory)
    clients_dir = root / CLIENTS_DIR
    secrets_dir = root / CLIENT_SECRETS_DIR
    names = [_client_name(i) for i in range(1, clients + 1)]
    server_public = root / f"{SERVER_NAME}{PUBLIC_SUFFIX}"
    server_secret = root / f"{SERVER_NAME}{SECRET_SUFFIX}"
    client_public = tuple(clients_dir / f"{n}{PUBLIC_SUFFIX}" for n in names)
    client_secret = tuple(secrets_dir / f"{n}{SECRET_SUFFIX}" for n in names)
    for target in [server_public, server_secret, *client_public, *client_secret]:
        _refuse_existing(target)

    root.mkdir(parents=True, exist_ok=True)
    clients_dir.mkdir(exist_ok=True)
    secrets_dir.mkdir(mode=0o700, exist_ok=True)
    now = datetime.datetime.now()
    for public_file, secret_file in [(server_public, server_secret), *zip(client_public, client_secret, strict=True)]:
        public, secret = zmq.curve_keypair()
        _write_certificate(secret_file, _certificate(_SECRET_BANNER, now, public, secret), _SECRET_MODE)
        _write_certificate(public_file, _certificate(_PUBLIC_BANNER, now, public), _PUBLIC_MODE)
    return KeyPaths(root, server_public, server_secret, clients_dir, client_public, client_secret)


_SECRET_BANNER = """#   ****  Generated on {0} by pyzmq  ****
#   ZeroMQ CURVE **Secret** Certificate
#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions.

"""
_PUBLIC_BANNER = """#   ****  Generated on {0} by pyzmq  ****
#   ZeroMQ CURVE Public Certificate
#   Exchange securely, or use a secure mechanism to verify the contents
#   of this file after exchange. Store public certificates in your home
#   directory, in the .curve subdirectory.

"""


def _certificate(banner: str, when: datetime.datetime, public: bytes, secret: bytes | None = None) -> str:
    """A certificate as ``zmq.auth.create_certificates`` writes it (``zmq.auth.load_certificate`` reads it)."""
    text = banner.format(when) + "metadata\ncurve\n" + f'    public-key = "{public.decode()}"\n'
    if secret is not None:
        text += f'    secret-key = "{secret.decode()}"\n'
    return text


def _refuse_existing(target: Path) -> None:
    if os.path.lexists(target):
        raise FileExistsError(f"refusing to overwrite existing key file {target}")


def _write_certificate(target: Path, text: str, mode: int) -> None:
    """Write ``text`` to ``target`` atomically, with ``mode`` set before the file takes its name."""
    _refuse_existing(target)  # again, right before the write: nothing may have appeared meanwhile
    with atomic_path(target) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, mode)


def _check_key(key: bytes | None, what: str, path: StrPath) -> bytes:
    if key is None or len(key) != _Z85_KEY_LEN:
        raise ValueError(f"malformed {what} key in {path}: expected {_Z85_KEY_LEN} Z85 characters")
    try:
        z85.decode(key)
    except (KeyError, ValueError, struct.error):  # bad character, length, or value overflow
        raise ValueError(f"malformed {what} key in {path}: not valid Z85 text") from None
    return key


def _read_certificate(path: StrPath) -> tuple[bytes, bytes | None]:
    if not os.path.isfile(path):
        raise ValueError(f"key file {path} does not exist or is not a file")
    try:
        size = os.path.getsize(path)
        if size > _MAX_CERTIFICATE_BYTES:
            raise ValueError(f"{size} bytes is too large for a certificate (at most {_MAX_CERTIFICATE_BYTES})")
        return zmq.auth.load_certificate(path)
    except (OSError, ValueError, IndexError) as exc:
        raise ValueError(f"cannot read key file {path}: {exc}") from None


def load_public(file: StrPath) -> bytes:
    """The public key in a ``.key`` (or ``.key_secret``) certificate file, as Z85 bytes."""
    public, _ = _read_certificate(file)
    return _check_key(public, "public", file)


def load_keypair(secret_file: StrPath) -> CurveKeys:
    """Both keys from a ``.key_secret`` certificate file; checks that they belong together."""
    public, secret = _read_certificate(secret_file)
    public = _check_key(public, "public", secret_file)
    if secret is None:
        raise ValueError(f"key file {secret_file} holds no secret key (pass the .key_secret file, not the .key)")
    secret = _check_key(secret, "secret", secret_file)
    if zmq.curve_public(secret) != public:
        raise ValueError(f"key file {secret_file}: the public key does not match the secret key")
    return CurveKeys(public=public, secret=secret)


class AllowList:
    """The client public keys a server accepts, as pyzmq's CURVE credentials provider.

    Pass it to ``ThreadAuthenticator.configure_curve_callback(domain="*", credentials_provider=...)``.
    The set is fixed when it is made: the folder it came from is not watched.
    """

    def __init__(self, keys: frozenset[bytes]):
        self.keys = keys

    def __len__(self) -> int:
        return len(self.keys)

    def callback(self, domain: str, key: bytes) -> bool:
        """pyzmq's hook: ``key`` is the connecting client's public key in Z85."""
        return key in self.keys


def load_allow_list(directory: StrPath) -> AllowList:
    """Read and validate every client public key (``*.key``) in the allow-list folder ``directory``.

    Raises :class:`ValueError` naming the first file that is not a readable certificate with a
    40-character Z85 public key (it would otherwise shut out every client), and
    :class:`FileNotFoundError` if ``directory`` is not a folder. Logs a warning when the folder holds
    no key: the server then starts but admits no client. Read once; see the module docstring.
    """
    root = Path(directory)
    if not root.is_dir():
        raise FileNotFoundError(
            f"{root}: no allow-list of client public keys (expected a folder of *{PUBLIC_SUFFIX} files)"
        )
    keys: set[bytes] = set()
    for file in sorted(root.glob(f"*{PUBLIC_SUFFIX}")):
        try:
            public = load_public(file)
        except ValueError as exc:
            raise ValueError(f"CURVE allow-list {root}: refusing to start: {exc}") from None
        keys.add(z85.encode(z85.decode(public)))  # canonical form, as the authenticator presents it
    if not keys:
        log.warning(
            "CURVE allow-list %s holds no client public key (*%s): no client can connect; add keys and restart",
            root,
            PUBLIC_SUFFIX,
        )
    return AllowList(frozenset(keys))
