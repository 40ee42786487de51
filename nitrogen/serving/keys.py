"""CURVE keys for the model server and its clients: create them once, load them at start-up.

Layout written by :func:`generate_keys`::

    <directory>/server.key                      server public key (give it to every client)
    <directory>/server.key_secret               server secret key (stays on the server, 0600)
    <directory>/clients/client-<i>.key          public keys the server accepts: its allow-list
    <directory>/client_secrets/client-<i>.key_secret   each client's secret key (0600)

The server points its authenticator at ``clients/`` (``configure_curve(location=...)``), which
therefore holds public keys only. Needs pyzmq, never torch.
"""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.utils import z85

__all__ = [
    "ClientCurve",
    "CurveKeys",
    "KeyPaths",
    "generate_keys",
    "load_keypair",
    "load_public",
]

SERVER_NAME = "server"
CLIENTS_DIR = "clients"
CLIENT_SECRETS_DIR = "client_secrets"
PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"
_Z85_KEY_LEN = 40  # a 32-byte CURVE key in Z85 text
_SECRET_MODE = 0o600

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
    :class:`FileExistsError` names it and nothing is written. Secret files get mode 0600.
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
    targets = [server_public, server_secret, *client_public, *client_secret]
    for target in targets:
        if os.path.lexists(target):
            raise FileExistsError(f"refusing to overwrite existing key file {target}")

    root.mkdir(parents=True, exist_ok=True)
    clients_dir.mkdir(exist_ok=True)
    secrets_dir.mkdir(mode=0o700, exist_ok=True)
    # Write into a private (0700) staging folder, lock the secrets down, then move each file into
    # place without clobbering anything that appeared meanwhile.
    staging = Path(tempfile.mkdtemp(prefix=".keys-", dir=root))
    try:
        moves: list[tuple[Path, Path]] = []
        for name, public_dst, secret_dst in [
            (SERVER_NAME, server_public, server_secret),
            *zip(names, client_public, client_secret, strict=True),
        ]:
            public_src, secret_src = (Path(p) for p in zmq.auth.create_certificates(staging, name))
            os.chmod(secret_src, _SECRET_MODE)
            moves += [(public_src, public_dst), (secret_src, secret_dst)]
        for src, dst in moves:
            _move_no_clobber(src, dst)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return KeyPaths(root, server_public, server_secret, clients_dir, client_public, client_secret)


def _move_no_clobber(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)  # fails if dst exists, unlike rename on POSIX
    except FileExistsError:
        raise FileExistsError(f"refusing to overwrite existing key file {dst}") from None
    os.unlink(src)


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
