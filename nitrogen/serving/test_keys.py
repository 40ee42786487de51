"""CURVE key files: generate, load, refuse to overwrite, keep secrets private."""

from __future__ import annotations

import logging
import os
import stat
import sys
from pathlib import Path

import pytest
import zmq
import zmq.auth

from nitrogen.serving.keys import (
    ClientCurve,
    CurveKeys,
    generate_keys,
    load_allow_list,
    load_keypair,
    load_public,
)


def test_generate_layout_and_load(tmp_path: Path) -> None:
    paths = generate_keys(tmp_path / "keys", clients=2)
    root = tmp_path / "keys"
    assert paths.server_public == root / "server.key"
    assert paths.server_secret == root / "server.key_secret"
    assert paths.client_public == (root / "clients" / "client-1.key", root / "clients" / "client-2.key")
    assert paths.client_secret == tuple(root / "client_secrets" / f"client-{i}.key_secret" for i in (1, 2))
    # The allow-list folder holds public keys only; no staging leftovers.
    assert sorted(p.name for p in paths.clients_dir.iterdir()) == ["client-1.key", "client-2.key"]
    assert sorted(p.name for p in root.iterdir()) == ["client_secrets", "clients", "server.key", "server.key_secret"]

    server = load_keypair(paths.server_secret)
    assert isinstance(server, CurveKeys) and len(server.public) == len(server.secret) == 40
    assert zmq.curve_public(server.secret) == server.public
    assert load_public(paths.server_public) == server.public
    assert load_public(paths.server_secret) == server.public
    assert "<hidden>" in repr(server) and server.secret.decode() not in repr(server)

    clients = [load_keypair(p) for p in paths.client_secret]
    assert [load_public(p) for p in paths.client_public] == [c.public for c in clients]
    assert len({server.public, *(c.public for c in clients)}) == 3

    curve = ClientCurve.from_files(paths.client_secret[1], paths.server_public)
    assert curve.client == clients[1] and curve.server_public == server.public


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_secret_files_are_private(tmp_path: Path) -> None:
    paths = generate_keys(tmp_path, clients=1)
    for secret in (paths.server_secret, *paths.client_secret):
        assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600, secret


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    paths = generate_keys(tmp_path)
    before = {p: p.read_bytes() for p in (paths.server_public, paths.server_secret)}
    with pytest.raises(FileExistsError, match="server.key"):
        generate_keys(tmp_path)
    assert {p: p.read_bytes() for p in before} == before

    # A single clashing client file also stops everything before anything is written.
    other = tmp_path / "other"
    (other / "client_secrets").mkdir(parents=True)
    (other / "client_secrets" / "client-2.key_secret").write_text("mine")
    with pytest.raises(FileExistsError, match="client-2.key_secret"):
        generate_keys(other, clients=2)
    assert not (other / "server.key").exists()
    assert (other / "client_secrets" / "client-2.key_secret").read_text() == "mine"


def test_zero_clients_and_bad_count(tmp_path: Path) -> None:
    paths = generate_keys(tmp_path, clients=0)
    assert paths.client_public == () and paths.server_secret.is_file()
    with pytest.raises(ValueError, match="clients"):
        generate_keys(tmp_path / "x", clients=-1)


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    paths = generate_keys(tmp_path / "keys")
    missing = tmp_path / "nope.key_secret"
    with pytest.raises(ValueError, match="nope.key_secret"):
        load_keypair(missing)
    with pytest.raises(ValueError, match="nope.key_secret"):
        load_public(missing)

    junk = tmp_path / "junk.key"
    junk.write_text("this is not a certificate\n")
    with pytest.raises(ValueError, match="junk.key"):
        load_public(junk)

    short = tmp_path / "short.key"
    short.write_text('curve\n    public-key = "abc"\n')
    with pytest.raises(ValueError, match="short.key"):
        load_public(short)

    bad_chars = tmp_path / "chars.key"
    for text in ("~" * 40, "#" * 40):  # not a Z85 character; a 5-character group above 2**32
        bad_chars.write_text(f'curve\n    public-key = "{text}"\n')
        with pytest.raises(ValueError, match="chars.key"):
            load_public(bad_chars)

    with pytest.raises(ValueError, match="no secret key"):
        load_keypair(paths.server_public)

    mismatched = tmp_path / "mismatched.key_secret"
    client = load_keypair(paths.client_secret[0])
    server_public = load_public(paths.server_public)
    mismatched.write_text(
        f'curve\n    public-key = "{server_public.decode()}"\n    secret-key = "{client.secret.decode()}"\n'
    )
    with pytest.raises(ValueError, match="does not match"):
        load_keypair(mismatched)

    with pytest.raises(ValueError, match="keys"):
        load_public(tmp_path / "keys")  # a folder, not a file


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_files_are_pyzmq_certificates_and_public_ones_are_readable(tmp_path: Path) -> None:
    paths = generate_keys(tmp_path, clients=2)
    for public in (paths.server_public, *paths.client_public):
        assert stat.S_IMODE(os.stat(public).st_mode) == 0o644, public
    allowed = zmq.auth.load_certificates(str(paths.clients_dir))  # what the server's authenticator reads
    assert set(allowed) == {load_keypair(p).public for p in paths.client_secret}
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


def test_allow_list_reads_every_key_and_names_a_bad_file(tmp_path: Path) -> None:
    paths = generate_keys(tmp_path, clients=3)
    allowed = load_allow_list(paths.clients_dir)
    assert allowed.keys == {load_keypair(p).public for p in paths.client_secret}
    assert len(allowed) == 3
    client = load_keypair(paths.client_secret[0]).public
    assert allowed.callback("*", client) is True
    assert allowed.callback("*", load_public(paths.server_public)) is False

    # Each kind of junk refuses the whole list, naming the file (sorted last, so the good ones were read first).
    junk = {
        "words": "this is not a certificate\n",
        "short": 'curve\n    public-key = "abc"\n',
        "bad-z85": 'curve\n    public-key = "' + "~" * 40 + '"\n',
        "binary": "\x00\xff" * 100,
        "no-equals": "curve\n    public-key\n",
        "huge": 'curve\n    public-key = "' + "a" * 200_000 + '"\n',
    }
    for name, text in junk.items():
        bad = paths.clients_dir / f"zz-{name}.key"
        bad.write_text(text, encoding="latin-1")
        with pytest.raises(ValueError, match=f"refusing to start.*zz-{name}.key"):
            load_allow_list(paths.clients_dir)
        bad.unlink()
    (paths.clients_dir / "zz-folder.key").mkdir()
    with pytest.raises(ValueError, match="zz-folder.key"):
        load_allow_list(paths.clients_dir)
    (paths.clients_dir / "zz-folder.key").rmdir()

    # Files that are not *.key are not part of the allow-list (as for pyzmq's own loader).
    (paths.clients_dir / "README.txt").write_text("notes")
    assert load_allow_list(paths.clients_dir).keys == allowed.keys
    with pytest.raises(FileNotFoundError, match="no allow-list"):
        load_allow_list(tmp_path / "nowhere")


def test_empty_allow_list_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    paths = generate_keys(tmp_path, clients=0)
    with caplog.at_level(logging.WARNING, logger="nitrogen.serving.keys"):
        allowed = load_allow_list(paths.clients_dir)
    assert len(allowed) == 0 and allowed.callback("*", b"x" * 40) is False
    assert any("no client can connect" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


# A real server on loopback: the allow-list decides who is answered.


@pytest.fixture(scope="module")
def engine(golden_dir: Path):
    from nitrogen.inference.engine import PolicyEngine

    return PolicyEngine.from_checkpoint(golden_dir / "released_layout.pt", device="cpu")


def _curve_server(engine, curve_dir: Path):
    from nitrogen.serving.server import InferenceServer, ServerConfig

    return InferenceServer(engine, ServerConfig(port=0, batch_wait_ms=0, curve_dir=curve_dir))


# The server re-raises a bind error in its I/O thread after handing it to start(); pytest reports that too.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_server_refuses_to_start_on_a_junk_key_and_names_it(engine, tmp_path: Path) -> None:
    paths = generate_keys(tmp_path / "keys", clients=2)
    (paths.clients_dir / "typo.key").write_text("pasted the wrong thing\n")
    server = _curve_server(engine, paths.directory)
    with pytest.raises(ValueError, match=r"typo\.key"):
        server.start()
    assert server.address is None  # never bound


def test_server_answers_every_listed_key_and_warns_on_empty_list(
    engine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from nitrogen.serving.client import ModelClient

    paths = generate_keys(tmp_path / "keys", clients=2)
    (paths.clients_dir / "notes.txt").write_text("not a key file, ignored")
    second = ClientCurve.from_files(paths.client_secret[1], paths.server_public)
    with _curve_server(engine, paths.directory) as srv:
        for secret in paths.client_secret:
            with ModelClient(srv.address, curve=ClientCurve.from_files(secret, paths.server_public), timeout_s=10) as c:
                assert c.ping() >= 0.0
        # Keys are read at start: a key removed while the server runs is still admitted ...
        paths.client_public[1].unlink()
        with ModelClient(srv.address, curve=second, timeout_s=10) as c:
            assert c.ping() >= 0.0
    # ... until the restart, which refuses it.
    with (
        _curve_server(engine, paths.directory) as srv,
        ModelClient(srv.address, curve=second, timeout_s=0.5, retries=1) as c,
        pytest.raises(TimeoutError),
    ):
        c.ping()

    empty = generate_keys(tmp_path / "empty", clients=0)
    with (
        caplog.at_level(logging.WARNING, logger="nitrogen.serving.keys"),
        _curve_server(engine, empty.directory) as srv,
    ):
        assert srv.address is not None
    assert any("no client can connect" in r.getMessage() for r in caplog.records)
