"""Credentials: the environment, their errors, and what reaches a real server (TLS or not).

The server here is a tiny grpc one that answers every call with what it
received: the ``authorization`` values, and the common name of the client's
certificate. It runs plaintext, TLS, or TLS that demands a client
certificate, with the certificates of ``tests/certs.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import uuid4

import grpc
import pytest

from tm_client import (
    AsyncTaskManagerClient,
    Credentials,
    PermissionDeniedError,
    Producer,
    TaskManagerClient,
    TaskState,
    TestServiceClient,
    UnauthenticatedError,
)
from tm_client.pb import task_manager_pb2 as pb

from ..certs import Certs, make_certs
from ..process import TM
from ..server_fixture import ServerThread

TOKEN = "s3cret.token-value_1"
ECHO = "/test.Echo/"
ENV_VARS = (
    "TM_TOKEN",
    "TM_TOKEN_FILE",
    "TM_TLS",
    "TM_TLS_CA",
    "TM_TLS_CERT",
    "TM_TLS_KEY",
    "TM_TLS_SERVER_NAME",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # The clients read these; an operator's own must not leak into the tests.
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


# ---- the echo server -------------------------------------------------------------------------


@dataclass
class Seen:
    """One call as the server received it."""

    method: str
    authorization: list[str]
    common_name: str
    request: bytes


def _seen(method: str, request: bytes, context: grpc.ServicerContext) -> Seen:
    auth = [str(v) for k, v in context.invocation_metadata() if k == "authorization"]
    name = next(iter(context.auth_context().get("x509_common_name", [b""])))
    assert isinstance(name, bytes)
    return Seen(method, auth, name.decode(), request)


def _reply(seen: Seen) -> bytes:
    return json.dumps({"authorization": seen.authorization, "cn": seen.common_name}).encode()


@dataclass
class Recorder(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    """Answers ``/test.Echo/*`` with what it got, and any other unary call with an empty message.

    An empty message is a valid reply to every tm RPC, so the real clients
    can be pointed at it; ``refuse`` makes a method fail with a status instead.
    """

    calls: list[Seen] = field(default_factory=list)
    refuse: dict[str, tuple[grpc.StatusCode, str]] = field(default_factory=dict)

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        method = handler_call_details.method

        def record(request: bytes, context: grpc.ServicerContext) -> Seen:
            seen = _seen(method, request, context)
            self.calls.append(seen)
            name = method.rsplit("/", 1)[-1]
            if name in self.refuse:
                context.abort(*self.refuse[name])
            return seen

        def unary_unary(request: bytes, context: grpc.ServicerContext) -> bytes:
            seen = record(request, context)
            return _reply(seen) if method.startswith(ECHO) else b""

        def unary_stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
            seen = record(request, context)
            yield _reply(seen)
            yield _reply(seen)

        def stream_unary(requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
            return _reply(record(b"".join(requests), context))

        def stream_stream(requests: Iterator[bytes], context: grpc.ServicerContext) -> Any:
            for request in requests:
                yield _reply(record(request, context))

        if method == ECHO + "UnaryStream":
            return grpc.unary_stream_rpc_method_handler(unary_stream)
        if method == ECHO + "StreamUnary":
            return grpc.stream_unary_rpc_method_handler(stream_unary)
        if method == ECHO + "StreamStream":
            return grpc.stream_stream_rpc_method_handler(stream_stream)
        return grpc.unary_unary_rpc_method_handler(unary_unary)


@dataclass
class EchoServer:
    target: str
    recorder: Recorder
    server: grpc.Server

    @property
    def calls(self) -> list[Seen]:
        return self.recorder.calls


def start_echo(
    certs: Certs | None = None, *, client_auth: bool = False, host: str = "127.0.0.1"
) -> EchoServer:
    recorder = Recorder()
    server = grpc.server(futures.ThreadPoolExecutor(4), handlers=[recorder])
    address = f"{host}:0"
    if certs is None:
        port = server.add_insecure_port(address)
    else:
        credentials = grpc.ssl_server_credentials(
            [(certs.server_key.read_bytes(), certs.server_cert.read_bytes())],
            root_certificates=certs.ca.read_bytes() if client_auth else None,
            require_client_auth=client_auth,
        )
        port = server.add_secure_port(address, credentials)
    server.start()
    return EchoServer(f"{host}:{port}", recorder, server)


@pytest.fixture
def plain() -> Iterator[EchoServer]:
    echo = start_echo()
    yield echo
    echo.server.stop(None)


@pytest.fixture
def tls(certs: Certs) -> Iterator[EchoServer]:
    echo = start_echo(certs)
    yield echo
    echo.server.stop(None)


@pytest.fixture
def mtls(certs: Certs) -> Iterator[EchoServer]:
    echo = start_echo(certs, client_auth=True)
    yield echo
    echo.server.stop(None)


def all_four(channel: grpc.Channel, metadata: Any = None) -> list[dict[str, Any]]:
    """Calls each kind of RPC once; returns what the server says it received, per reply."""
    kw: dict[str, Any] = {"timeout": 10, "metadata": metadata}
    replies = [
        channel.unary_unary(ECHO + "Unary", None, None)(b"x", **kw),
        *channel.unary_stream(ECHO + "UnaryStream", None, None)(b"x", **kw),
        channel.stream_unary(ECHO + "StreamUnary", None, None)(iter([b"a", b"b"]), **kw),
        *channel.stream_stream(ECHO + "StreamStream", None, None)(iter([b"a", b"b"]), **kw),
    ]
    return [json.loads(r) for r in replies]


async def all_four_aio(channel: grpc.aio.Channel) -> list[dict[str, Any]]:
    async def requests() -> Any:
        yield b"a"
        yield b"b"

    replies = [await channel.unary_unary(ECHO + "Unary", None, None)(b"x", timeout=10)]
    replies += [
        r async for r in channel.unary_stream(ECHO + "UnaryStream", None, None)(b"x", timeout=10)
    ]
    replies.append(
        await channel.stream_unary(ECHO + "StreamUnary", None, None)(requests(), timeout=10)
    )
    call = channel.stream_stream(ECHO + "StreamStream", None, None)(requests(), timeout=10)
    replies += [r async for r in call]
    return [json.loads(r) for r in replies]


# ---- the environment and merging -------------------------------------------------------------


def test_from_env_reads_every_variable(tmp_path: Path) -> None:
    assert Credentials.from_env({}) == Credentials()
    assert Credentials.from_env({}).tls is False
    token_file = tmp_path / "token"
    token_file.write_text(f"  {TOKEN}  \nsecond line ignored\n")
    creds = Credentials.from_env(
        {
            "TM_TOKEN_FILE": str(token_file),
            "TM_TLS_CA": "/ca.pem",
            "TM_TLS_CERT": "/c.pem",
            "TM_TLS_KEY": "/c.key",
            "TM_TLS_SERVER_NAME": "tm.internal",
        }
    )
    assert creds == Credentials(
        token=TOKEN,
        ca=Path("/ca.pem"),
        cert=Path("/c.pem"),
        key=Path("/c.key"),
        server_name="tm.internal",
        tls=True,  # a CA (or a client certificate) turns TLS on by itself
    )
    # TM_TOKEN wins over TM_TOKEN_FILE, which is then not even read.
    env = {"TM_TOKEN": "direct", "TM_TOKEN_FILE": str(tmp_path / "missing")}
    assert Credentials.from_env(env).token == "direct"
    # TM_TLS alone: TLS with the system's roots.
    for value in ("1", "true", "TRUE", "yes", "on"):
        assert Credentials.from_env({"TM_TLS": value}) == Credentials(tls=True)
    for value in ("", "0", "false", "no", "off"):
        assert Credentials.from_env({"TM_TLS": value}).tls is False
    with pytest.raises(ValueError, match="TM_TLS must be 1/true or 0/false, not 'maybe'"):
        Credentials.from_env({"TM_TLS": "maybe"})
    # Empty variables count as unset.
    empty = {name: "" for name in ENV_VARS}
    assert Credentials.from_env(empty) == Credentials()


def test_from_env_defaults_to_the_process_environment(
    monkeypatch: pytest.MonkeyPatch, certs: Certs
) -> None:
    monkeypatch.setenv("TM_TOKEN", TOKEN)
    monkeypatch.setenv("TM_TLS_CA", str(certs.ca))
    assert Credentials.from_env() == Credentials(token=TOKEN, ca=certs.ca)


def test_merged_takes_each_setting_the_other_gives() -> None:
    env = Credentials(token="env", ca=Path("/env-ca.pem"), server_name="env.name")
    flags = Credentials(token="flag", cert=Path("/c.pem"), key=Path("/c.key"))
    assert env.merged(flags) == Credentials(
        token="flag",
        ca=Path("/env-ca.pem"),
        cert=Path("/c.pem"),
        key=Path("/c.key"),
        server_name="env.name",
    )
    assert env.merged(Credentials()) == env
    assert Credentials().merged(Credentials(tls=True)).tls
    assert Credentials(tls=True).merged(Credentials()).tls


def test_a_repr_never_shows_the_token() -> None:
    text = repr(Credentials(token=TOKEN, server_name="n"))
    assert TOKEN not in text and "token='<hidden>'" in text and "server_name='n'" in text
    assert "token=None" in repr(Credentials())


def test_paths_given_as_strings_are_paths() -> None:
    creds = Credentials(ca="/ca.pem")  # type: ignore[arg-type]
    assert creds.ca == Path("/ca.pem") and creds.tls


# ---- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "message"),
    [
        (f"{TOKEN}\n", "has a line break at character 21"),
        (f"{TOKEN}\r", "has a line break"),
        ("two words", "has whitespace at character 4"),
        ("tab\there", "has whitespace"),
        (f"Bearer {TOKEN}", "starts with 'Bearer ': give the token alone"),
        ("caf\u00e9", "not printable ASCII"),
    ],
)
def test_a_token_that_cannot_be_a_header_is_refused(token: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as err:
        Credentials(token=token)
    assert "the token " in str(err.value)
    with pytest.raises(ValueError, match=message) as err:
        Credentials.from_env({"TM_TOKEN": token})
    assert str(err.value).startswith("TM_TOKEN ")
    assert token.strip() not in str(err.value)  # a secret stays out of error lines


def test_an_empty_token_is_an_error_but_an_empty_variable_is_none() -> None:
    with pytest.raises(ValueError, match=r"^the token is empty$"):
        Credentials(token="")
    assert Credentials.from_env({"TM_TOKEN": ""}).token is None


def test_token_file_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(ValueError) as err:
        Credentials.from_env({"TM_TOKEN_FILE": str(missing)})
    assert str(err.value) == (
        f"cannot read the token file {missing} (TM_TOKEN_FILE): No such file or directory"
    )
    empty = tmp_path / "empty"
    empty.write_text("\nsecond\n")
    with pytest.raises(ValueError, match=f"the token file {empty} .* has no token"):
        Credentials.from_env({"TM_TOKEN_FILE": str(empty)})
    spaced = tmp_path / "spaced"
    spaced.write_text("two words\n")
    with pytest.raises(ValueError, match=f"the token in {spaced} has whitespace"):
        Credentials.from_env({"TM_TOKEN_FILE": str(spaced)})
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe\n")
    with pytest.raises(ValueError, match="is not UTF-8 text"):
        Credentials.from_env({"TM_TOKEN_FILE": str(binary)})


def test_a_certificate_needs_its_key_and_a_key_its_certificate(certs: Certs) -> None:
    cert, key = certs.client("alice")
    with pytest.raises(ValueError) as err:
        Credentials(cert=cert).channel("127.0.0.1:1")
    assert str(err.value) == (
        f"the TLS client certificate {cert} needs the TLS client key too "
        "(give it with --tls-key or TM_TLS_KEY)"
    )
    with pytest.raises(ValueError, match=f"the TLS client key {key} needs the TLS client cert"):
        Credentials(key=key).check()


def test_unreadable_or_wrong_pem_files_are_named_with_the_reason(
    certs: Certs, tmp_path: Path
) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(ValueError) as err:
        Credentials(ca=missing).check()
    assert str(err.value) == (
        f"cannot read the TLS CA certificate {missing} (--tls-ca or TM_TLS_CA): "
        "No such file or directory"
    )
    with pytest.raises(ValueError, match=f"TLS CA certificate {tmp_path} .*: Is a directory"):
        Credentials(ca=tmp_path).check()
    not_pem = tmp_path / "ca.der"
    not_pem.write_bytes(b"\x30\x82\x01\x0a")
    with pytest.raises(ValueError, match=f"the TLS CA certificate {not_pem} .* is not a PEM file"):
        Credentials(ca=not_pem).check()
    cert, key = certs.client("alice")
    with pytest.raises(ValueError, match=f"the TLS client key {cert} .* holds no private key"):
        Credentials(cert=key, key=cert).check()  # swapped
    with pytest.raises(ValueError, match=f"the TLS CA certificate {key} .* holds no certificate"):
        Credentials(ca=key).aio_channel("127.0.0.1:1")


def test_a_server_name_without_tls_is_refused() -> None:
    with pytest.raises(ValueError, match=r"TLS server name \(tm\.internal\) is set but TLS is off"):
        Credentials(server_name="tm.internal").channel("127.0.0.1:1")


def test_a_client_takes_credentials_or_a_channel_not_both() -> None:
    with (
        grpc.insecure_channel("127.0.0.1:1") as channel,
        pytest.raises(ValueError, match="credentials or a channel, not both"),
    ):
        TaskManagerClient(channel=channel, credentials=Credentials())


# ---- what reaches the server -----------------------------------------------------------------


def test_the_token_goes_on_every_kind_of_call_over_plaintext(plain: EchoServer) -> None:
    with Credentials(token=TOKEN).channel(plain.target) as channel:
        replies = all_four(channel)
        assert len(replies) == 6
        assert all(r["authorization"] == [f"Bearer {TOKEN}"] for r in replies)
        # A call that sends its own authorization keeps it, alone.
        mine = all_four(channel, metadata=(("authorization", "Bearer other"),))
        assert all(r["authorization"] == ["Bearer other"] for r in mine)
    with Credentials().channel(plain.target) as channel:
        assert all(r["authorization"] == [] for r in all_four(channel))


def test_tls_with_the_ca_and_the_token(tls: EchoServer, certs: Certs) -> None:
    with Credentials(token=TOKEN, ca=certs.ca).channel(tls.target) as channel:
        replies = all_four(channel)
    assert all(r["authorization"] == [f"Bearer {TOKEN}"] and r["cn"] == "" for r in replies)
    # The certificate names localhost too; a target by another name checks that name.
    port = tls.target.rsplit(":", 1)[1]
    with Credentials(ca=certs.ca).channel(f"localhost:{port}") as channel:
        assert len(all_four(channel)) == 6


def test_tls_refuses_a_server_the_ca_did_not_sign(tls: EchoServer, certs: Certs) -> None:
    for creds in (
        Credentials(ca=certs.other_ca),
        Credentials(tls=True),  # the system's roots do not know the test CA either
        Credentials(ca=certs.ca, server_name="not-the-server.example"),
    ):
        with creds.channel(tls.target) as channel, pytest.raises(grpc.RpcError) as err:
            channel.unary_unary(ECHO + "Unary", None, None)(b"x", timeout=10)
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE
    assert tls.calls == []


def test_the_server_name_overrides_the_target_host(certs: Certs) -> None:
    # A node reached by an address its certificate does not name: 127.0.0.2
    # is loopback but not in the certificate, "localhost" is.
    echo = start_echo(certs, host="127.0.0.2")
    try:
        with (
            Credentials(ca=certs.ca).channel(echo.target) as channel,
            pytest.raises(grpc.RpcError),
        ):
            channel.unary_unary(ECHO + "Unary", None, None)(b"x", timeout=10)
        creds = Credentials(ca=certs.ca, server_name="localhost")
        with creds.channel(echo.target) as channel:
            assert len(all_four(channel)) == 6
    finally:
        echo.server.stop(None)


def test_mutual_tls_presents_the_client_certificate(mtls: EchoServer, certs: Certs) -> None:
    cert, key = certs.client("alice")
    with Credentials(ca=certs.ca, cert=cert, key=key, token=TOKEN).channel(mtls.target) as ch:
        replies = all_four(ch)
    assert all(r["cn"] == "alice" and r["authorization"] == [f"Bearer {TOKEN}"] for r in replies)
    untrusted = certs.client("mallory", untrusted=True)
    for creds in (
        Credentials(ca=certs.ca),  # no client certificate
        Credentials(ca=certs.ca, cert=untrusted[0], key=untrusted[1]),
    ):
        with creds.channel(mtls.target) as channel, pytest.raises(grpc.RpcError) as err:
            channel.unary_unary(ECHO + "Unary", None, None)(b"x", timeout=10)
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE
    assert {c.common_name for c in mtls.calls} == {"alice"}


async def test_the_asyncio_channel_carries_the_token_plain_and_mutual_tls(
    plain: EchoServer, mtls: EchoServer, certs: Certs
) -> None:
    async with Credentials(token=TOKEN).aio_channel(plain.target) as channel:
        replies = await all_four_aio(channel)
    assert len(replies) == 6
    assert all(r["authorization"] == [f"Bearer {TOKEN}"] for r in replies)
    cert, key = certs.client("bob")
    creds = Credentials(ca=certs.ca, cert=cert, key=key, token=TOKEN)
    async with creds.aio_channel(mtls.target) as channel:
        replies = await all_four_aio(channel)
    assert all(r["cn"] == "bob" and r["authorization"] == [f"Bearer {TOKEN}"] for r in replies)
    async with Credentials().aio_channel(plain.target) as channel:
        assert all(r["authorization"] == [] for r in await all_four_aio(channel))


# ---- the clients -----------------------------------------------------------------------------


def test_every_client_takes_the_environment_s_credentials(
    monkeypatch: pytest.MonkeyPatch, mtls: EchoServer, certs: Certs, tmp_path: Path
) -> None:
    cert, key = certs.client("carol")
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    for name, value in (
        ("TM_TOKEN_FILE", token_file),
        ("TM_TLS_CA", certs.ca),
        ("TM_TLS_CERT", cert),
        ("TM_TLS_KEY", key),
    ):
        monkeypatch.setenv(name, str(value))
    with TaskManagerClient(mtls.target) as client:
        client.get_ttl()
    with TestServiceClient(mtls.target) as testsvc:
        testsvc.register_module()
    with Producer(mtls.target, module="m", session=False):
        pass
    assert [c.method.rsplit("/", 1)[1] for c in mtls.calls] == [
        "GetTtl",
        "RegisterTestModule",
        "RegisterModule",
    ]
    assert all(c.authorization == [f"Bearer {TOKEN}"] for c in mtls.calls)
    assert all(c.common_name == "carol" for c in mtls.calls)


async def test_the_async_client_takes_the_environment_s_credentials(
    monkeypatch: pytest.MonkeyPatch, plain: EchoServer
) -> None:
    monkeypatch.setenv("TM_TOKEN", TOKEN)
    async with AsyncTaskManagerClient(plain.target) as client:
        await client.get_ttl()
    assert plain.calls[0].authorization == [f"Bearer {TOKEN}"]


def test_given_credentials_win_and_a_given_channel_is_used_as_it_is(
    monkeypatch: pytest.MonkeyPatch, plain: EchoServer
) -> None:
    monkeypatch.setenv("TM_TOKEN", "from-env")
    with TaskManagerClient(plain.target, credentials=Credentials(token=TOKEN)) as client:
        client.get_ttl()
    with TaskManagerClient(channel=grpc.insecure_channel(plain.target)) as client:
        client.get_ttl()
    with Producer(plain.target, module="m", session=False, credentials=Credentials()):
        pass
    assert [c.authorization for c in plain.calls] == [[f"Bearer {TOKEN}"], [], []]


def test_a_bad_environment_fails_the_client_with_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TM_TLS_CA", str(tmp_path / "ca.pem"))
    with pytest.raises(ValueError, match="cannot read the TLS CA certificate"):
        TaskManagerClient("127.0.0.1:1")


async def test_abort_sends_the_reason(plain: EchoServer) -> None:
    task_id = uuid4()
    with TaskManagerClient(plain.target) as client:
        client.abort(task_id, reason="maintenance window")
        client.task(task_id).abort("again")
        client.abort(task_id)
    async with AsyncTaskManagerClient(plain.target) as aclient:
        await aclient.abort(task_id, "async")
        await aclient.task(task_id).abort(reason="handle")
    requests = [pb.AbortTaskRequest.FromString(c.request) for c in plain.calls]
    assert {r.task_id for r in requests} == {str(task_id)}
    assert [r.reason for r in requests] == ["maintenance window", "again", "", "async", "handle"]


async def test_the_clients_drive_a_real_server_through_the_token_interceptor(
    server: ServerThread,
) -> None:
    # Streams and their cancellation (the session, watch) through the
    # interceptors: a server without callers to check takes the header and
    # goes on.
    creds = Credentials(token=TOKEN)
    with (
        Producer(server.target, module="jobs", credentials=creds) as producer,
        TaskManagerClient(server.target, credentials=creds) as client,
    ):
        client.set_ttl(600)  # finished tasks stay to be looked at
        task = producer.task("job", abortable=True)
        client.abort(task.id, reason="because")
        assert task.wait_abort(10)
        task.finish()
        assert client.wait(task.id, timeout=10).state is TaskState.FAILED
    async with AsyncTaskManagerClient(server.target, credentials=creds) as aclient:
        statuses = [s async for s in aclient.watch(task.id, timeout=10)]
    assert statuses[-1].state is TaskState.FAILED


def test_a_producer_refused_its_session_says_why_at_once(plain: EchoServer) -> None:
    # Not a TimeoutError after `timeout` seconds of retrying what will not change.
    plain.recorder.refuse["OpenSession"] = (grpc.StatusCode.PERMISSION_DENIED, "needs producer")
    started = time.monotonic()
    with pytest.raises(PermissionDeniedError, match="needs producer"):
        Producer(plain.target, module="m", timeout=20)
    assert time.monotonic() - started < 10
    plain.recorder.refuse["OpenSession"] = (grpc.StatusCode.UNAUTHENTICATED, "no token")
    with pytest.raises(UnauthenticatedError, match="no token"):
        Producer(plain.target, module="m", timeout=20)


# ---- the CLI ---------------------------------------------------------------------------------


def tm(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    full_env.update(env or {})
    return subprocess.run([TM, *args], capture_output=True, text=True, timeout=60, env=full_env)


def test_the_cli_over_mutual_tls_with_a_token_file(
    mtls: EchoServer, certs: Certs, tmp_path: Path
) -> None:
    cert, key = certs.client("ops")
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    flags = ["--tls-ca", str(certs.ca), "--tls-cert", str(cert), "--tls-key", str(key)]
    result = tm("--target", mtls.target, *flags, "--token-file", str(token_file), "tasks", "ttl")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Current ttl: 0\n"
    # The same from the environment, and the flags after the verb.
    env = {"TM_TLS_CA": str(certs.ca), "TM_TLS_CERT": str(cert), "TM_TLS_KEY": str(key)}
    host, port = mtls.target.rsplit(":", 1)
    result = tm("tasks", "abort", str(uuid4()), "-h", host, "-p", port, "--reason", "r", env=env)
    assert result.returncode == 0, result.stderr
    result = tm("--target", mtls.target, "tasks", "modules", "--token", "flag-token", env=env)
    assert result.returncode == 0, result.stderr
    assert [c.authorization for c in mtls.calls] == [[f"Bearer {TOKEN}"], [], ["Bearer flag-token"]]
    assert {c.common_name for c in mtls.calls} == {"ops"}
    assert pb.AbortTaskRequest.FromString(mtls.calls[1].request).reason == "r"


def test_the_cli_says_in_one_line_what_is_wrong_with_the_credentials(
    certs: Certs, tmp_path: Path
) -> None:
    cert, _ = certs.client("ops")
    cases = [
        (["--tls-cert", str(cert)], {}, f"tm: the TLS client certificate {cert} needs the TLS"),
        ([], {"TM_TLS_CA": str(tmp_path / "x.pem")}, "tm: cannot read the TLS CA certificate"),
        (["--token", "a b"], {}, "tm: --token has whitespace at character 2"),
        (["--token-file", str(tmp_path / "t")], {}, "tm: cannot read the token file"),
        (["--token", "a", "--token-file", "f"], {}, "tm: give --token or --token-file, not both"),
        ([], {"TM_TOKEN": "x\n"}, "tm: TM_TOKEN has a line break"),
    ]
    for flags, env, message in cases:
        result = tm("--target", "127.0.0.1:1", *flags, "tasks", "modules", env=env)
        assert result.returncode == 1, (flags, env, result.stderr)
        assert result.stderr.startswith(message), (flags, env, result.stderr)
        assert len(result.stderr.splitlines()) == 1 and result.stdout == ""
    # `tasks wait` fails with its own error code, as for any other error.
    result = tm("--target", "127.0.0.1:1", "--tls-cert", str(cert), "tasks", "wait", "x")
    assert result.returncode == 125 and "needs the TLS client key" in result.stderr


def test_the_cli_explains_a_refusal_in_one_line(plain: EchoServer) -> None:
    plain.recorder.refuse["ListModules"] = (grpc.StatusCode.UNAUTHENTICATED, "no valid token")
    plain.recorder.refuse["SetTtl"] = (grpc.StatusCode.PERMISSION_DENIED, "needs role admin")
    result = tm("--target", plain.target, "tasks", "modules")
    assert result.returncode == 1
    assert result.stderr == (
        f"tm: not authenticated by the tm server at {plain.target}: no valid token (give a "
        "token with --token-file, --token, $TM_TOKEN_FILE or $TM_TOKEN, or a client "
        "certificate with --tls-cert and --tls-key)\n"
    )
    result = tm("--target", plain.target, "tasks", "ttl", "--set", "5")
    assert result.returncode == 1
    assert result.stderr == (
        f"tm: permission denied by the tm server at {plain.target}: needs role admin\n"
    )


def test_the_cli_hints_at_what_to_fix_when_tls_does_not_come_together(
    tls: EchoServer, plain: EchoServer, certs: Certs
) -> None:
    def error_line(*flags: str) -> str:
        result = tm(*flags, "tasks", "modules")
        assert result.returncode == 1 and "Traceback" not in result.stderr
        # grpc itself may log the failed handshake before it: the CLI's line is the last.
        line = result.stderr.splitlines()[-1]
        assert line.startswith("tm: cannot reach the tm server at 127.0.0.1:")
        return line

    assert "(if the server wants TLS, or a client certificate" in error_line("--target", tls.target)
    assert "give its CA with --tls-ca)" in error_line(
        "--target", tls.target, "--tls-ca", str(certs.other_ca)
    )
    assert "does not name the host: see --tls-server-name)" in error_line(
        "--target", tls.target, "--tls-ca", str(certs.ca), "--tls-server-name", "x.example"
    )
    assert "does not seem to use TLS" in error_line(
        "--target", plain.target, "--tls-ca", str(certs.ca)
    )
