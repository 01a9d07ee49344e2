"""The HTTP side under caller checks: tokens and roles, cookies and CSRF, origins, TLS, audit."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import pytest
import requests

from tm_server.security.tls import TlsConfig
from tm_server.security.tokens import hash_token

from ..certs import make_certs
from ..server_fixture import ServerThread
from .conftest import Reporter, RestApi, SseStream, error_of, http_port, start_http_server

pytestmark = pytest.mark.timeout(30)

PRINCIPALS: dict[str, list[str]] = {
    "reader": ["reader"],
    "repair_reader": ["reader:repair"],
    "producer": ["producer:backup"],
    "repairer": ["producer:repair"],
    "operator": ["operator"],
    "backup_ops": ["operator:backup"],
    "tester": ["test"],
}


def token_of(name: str) -> str:
    return f"http-token-of-{name}"


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token_of(name)}"}


def write_tokens(path: Path) -> Path:
    entries = []
    for name, roles in PRINCIPALS.items():
        quoted = ", ".join(f'"{r}"' for r in roles)
        entries.append(
            f'[[principal]]\nname = "{name}"\nroles = [{quoted}]\n'
            f'tokens = ["{hash_token(token_of(name))}"]\n'
        )
    path.write_text("\n".join(entries))
    return path


@pytest.fixture
def tokens(tmp_path: Path) -> Path:
    return write_tokens(tmp_path / "tokens.toml")


@pytest.fixture
def secured(tokens: Path) -> Iterator[ServerThread]:
    thread = start_http_server(tokens=tokens, task_ttl=60)
    yield thread
    thread.stop()


@pytest.fixture
def port(secured: ServerThread) -> int:
    return http_port(secured)


def api_as(port: int, name: str | None) -> RestApi:
    return RestApi(port, headers={} if name is None else bearer(name))


class Tasks:
    """Tasks of module backup (its producer's) and repair (another producer's)."""

    def __init__(self, target: str) -> None:
        self.backup = Reporter(target, token_of("producer"))
        self.repair = Reporter(target, token_of("repairer"))
        self.backup.register("backup")
        self.repair.register("repair")

    def close(self) -> None:
        self.backup.close()
        self.repair.close()


@pytest.fixture
def tasks(secured: ServerThread) -> Iterator[Tasks]:
    t = Tasks(secured.target)
    yield t
    t.close()


def set_cookies(resp: requests.Response) -> dict[str, Any]:
    """The response's Set-Cookie headers: name -> the parsed morsel."""
    found: dict[str, Any] = {}
    for header in resp.raw.headers.getlist("Set-Cookie"):
        cookie: SimpleCookie = SimpleCookie()
        cookie.load(header)
        for name, morsel in cookie.items():
            found[name] = morsel
    return found


def login(port: int, name: str, **kwargs: Any) -> tuple[RestApi, requests.Response]:
    """A browser-like session (cookies kept) logged in as ``name``."""
    session = requests.Session()
    api = RestApi(port, session=session)
    kwargs.setdefault("data", {"token": token_of(name)})
    resp = api.send("POST", "tm/v1/login", **kwargs)
    return api, resp


def csrf_of(api: RestApi) -> str:
    assert api.session is not None
    value = api.session.cookies.get("tm_csrf")
    assert isinstance(value, str) and value
    return value


# ---- tokens and roles ----------------------------------------------------------------------


def test_no_token_or_an_unknown_one_is_401_json(port: int) -> None:
    for headers in ({}, {"Authorization": "Bearer not-a-known-token"},
                    {"Authorization": "Basic dXNlcjpwYXNz"}):  # fmt: skip
        for method, path in [
            ("GET", "task_manager/list_modules"),
            ("GET", "task_manager/ttl"),
            ("POST", "task_manager/ttl?ttl=5"),
            ("GET", "tm/v1/nodes"),
            ("GET", "tm/v1/whoami"),
        ]:
            resp = RestApi(port, headers=headers).send(method, path)
            error_of(resp, 401, "UNAUTHENTICATED")
    assert api_as(port, "operator").json("GET", "task_manager/ttl") == 60


def test_a_reader_reads_but_cannot_operate(port: int, tasks: Tasks) -> None:
    task = tasks.backup.create("backup", "dump", abortable=True)
    reader = api_as(port, "reader")
    assert sorted(reader.json("GET", "task_manager/list_modules")) == ["backup", "repair", "test"]
    assert [e["task_id"] for e in reader.json("GET", "task_manager/list_module_tasks/backup")] == [
        task
    ]
    assert reader.json("GET", f"task_manager/task_status/{task}")["owner"] == "producer"
    assert len(reader.json("GET", f"task_manager/task_status_recursive/{task}")) == 1
    assert reader.json("GET", "task_manager/ttl") == 60
    assert reader.json("GET", "task_manager/user_ttl") == 3600
    assert reader.json("GET", f"tm/v1/children/{task}")["count"] == 0
    assert reader.json("GET", "tm/v1/nodes")[0]["name"] == "node-a"
    for method, path, params in [
        ("POST", f"task_manager/abort_task/{task}", None),
        ("POST", "task_manager/ttl", {"ttl": 1}),
        ("POST", "task_manager/user_ttl", {"user_ttl": 1}),
        ("POST", "task_manager/drain/backup", None),
    ]:
        body = error_of(reader.send(method, path, params), 403, "PERMISSION_DENIED")
        assert "operator" in body["message"], body
    # The test API needs the test role.
    error_of(reader.send("POST", "task_manager_test/test_task"), 403, "PERMISSION_DENIED")
    made = api_as(port, "tester").json("POST", "task_manager_test/test_task")
    assert isinstance(made, str)
    # Nothing was changed by the refusals.
    status = reader.json("GET", f"task_manager/task_status/{task}")
    assert status["state"] == "running" and status["abort_requested"] is False
    assert reader.json("GET", "task_manager/ttl") == 60


def test_module_limited_grants(port: int, tasks: Tasks) -> None:
    backup_task = tasks.backup.create("backup", "dump", abortable=True)
    repair_task = tasks.repair.create("repair", "ranges", abortable=True)
    ops = api_as(port, "backup_ops")
    # An operator of backup cannot drain, abort or set what is not only backup's.
    error_of(ops.send("POST", "task_manager/drain/repair"), 403, "PERMISSION_DENIED")
    error_of(ops.send("POST", f"task_manager/abort_task/{repair_task}"), 403, "PERMISSION_DENIED")
    error_of(ops.send("POST", "task_manager/ttl", {"ttl": 5}), 403, "PERMISSION_DENIED")
    assert ops.send("POST", "task_manager/drain/backup").status_code == 200
    assert ops.send("POST", f"task_manager/abort_task/{backup_task}").status_code == 200
    reader = api_as(port, "reader")
    assert reader.json("GET", f"task_manager/task_status/{repair_task}")["abort_requested"] is False
    assert reader.json("GET", f"task_manager/task_status/{backup_task}")["abort_requested"] is True
    # A reader of repair reads repair only.
    narrow = api_as(port, "repair_reader")
    assert [e["task_id"] for e in narrow.json("GET", "task_manager/list_module_tasks/repair")] == [
        repair_task
    ]
    error_of(narrow.send("GET", "task_manager/list_module_tasks/backup"), 403, "PERMISSION_DENIED")
    error_of(
        narrow.send("GET", f"task_manager/task_status/{backup_task}"), 403, "PERMISSION_DENIED"
    )
    error_of(narrow.send("GET", f"tm/v1/children/{backup_task}"), 403, "PERMISSION_DENIED")


def test_whoami_says_who_and_what(port: int) -> None:
    me = api_as(port, "backup_ops").json("GET", "tm/v1/whoami")
    assert me["principal"] == "backup_ops" and me["checks_callers"] is True
    assert me["grants"] == [{"role": "operator", "modules": ["backup"]}]
    assert me["can"]["abort"] == ["backup"] and me["can"]["set_ttl"] is False
    me = api_as(port, "operator").json("GET", "tm/v1/whoami")
    assert me["grants"] == [{"role": "operator", "modules": None}]
    assert me["can"] == {"read": True, "abort": True, "set_ttl": True}
    me = api_as(port, "reader").json("GET", "tm/v1/whoami")
    assert me["principal"] == "reader"
    assert me["can"]["read"] is True and me["can"]["set_ttl"] is False
    assert me["can"]["abort"] in (False, []), me["can"]  # no module to abort in


# ---- cookies, CSRF, origins ----------------------------------------------------------------


def test_login_sets_the_cookies_and_they_authenticate(port: int) -> None:
    api, resp = login(port, "operator")
    assert resp.status_code == 200, resp.text
    cookies = set_cookies(resp)
    assert {"tm_token", "tm_csrf"} <= set(cookies), cookies
    token = cookies["tm_token"]
    assert token["httponly"] is True
    assert str(token["samesite"]).lower() == "strict"
    assert not token["secure"]  # plain HTTP here; Secure under TLS
    assert cookies["tm_csrf"].value
    # Cookies alone authenticate reads.
    assert api.json("GET", "tm/v1/whoami")["principal"] == "operator"
    assert api.json("GET", "task_manager/ttl") == 60
    # A JSON body logs in as well.
    other, resp = login(port, "reader", data=None, json={"token": token_of("reader")})
    assert resp.status_code == 200, resp.text
    assert other.json("GET", "tm/v1/whoami")["principal"] == "reader"


def test_login_with_an_unknown_token_is_401_and_sets_nothing(port: int) -> None:
    api, resp = login(port, "nobody")
    error_of(resp, 401, "UNAUTHENTICATED")
    assert "tm_token" not in set_cookies(resp)
    error_of(api.send("GET", "task_manager/list_modules"), 401, "UNAUTHENTICATED")


def test_cookie_posts_need_the_csrf_header(port: int) -> None:
    api, resp = login(port, "operator")
    assert resp.status_code == 200
    body = error_of(api.send("POST", "task_manager/ttl", {"ttl": 5}), 403, "CROSS_SITE_REQUEST")
    assert body["message"]
    resp = api.send("POST", "task_manager/ttl", {"ttl": 5}, headers={"X-TM-CSRF": "wrong"})
    error_of(resp, 403, "CROSS_SITE_REQUEST")
    assert api.json("GET", "task_manager/ttl") == 60  # nothing changed
    resp = api.send("POST", "task_manager/ttl", {"ttl": 5}, headers={"X-TM-CSRF": csrf_of(api)})
    assert resp.status_code == 200 and resp.json() == 60
    assert api.json("GET", "task_manager/ttl") == 5


def test_another_origin_is_refused_even_with_a_bearer_token(port: int) -> None:
    ops = api_as(port, "operator")
    for headers in ({"Origin": "http://evil.example"}, {"Sec-Fetch-Site": "cross-site"},
                    {"Origin": f"http://127.0.0.1:{port + 1}"}):  # fmt: skip
        resp = ops.send("POST", "task_manager/ttl", {"ttl": 7}, headers=headers)
        error_of(resp, 403, "CROSS_SITE_REQUEST")
    assert ops.json("GET", "task_manager/ttl") == 60
    # The login form of another site cannot log a browser in either.
    _, resp = login(port, "operator", headers={"Origin": "http://evil.example"})
    error_of(resp, 403, "CROSS_SITE_REQUEST")
    assert "tm_token" not in set_cookies(resp)
    # This server's own origin, or none (curl): fine.
    resp = ops.send("POST", "task_manager/ttl", {"ttl": 7},
                    headers={"Origin": f"http://127.0.0.1:{port}"})  # fmt: skip
    assert resp.status_code == 200, resp.text
    assert ops.send("POST", "task_manager/ttl", {"ttl": 60}).status_code == 200
    # A read from another origin is no change: answered (the browser keeps it from the page).
    assert ops.send("GET", "task_manager/ttl", headers={"Origin": "http://evil.example"}).ok


def test_logout_clears_the_cookies(port: int) -> None:
    api, resp = login(port, "reader")
    assert resp.status_code == 200
    assert api.json("GET", "tm/v1/whoami")["principal"] == "reader"
    resp = api.send("POST", "tm/v1/logout", headers={"X-TM-CSRF": csrf_of(api)})
    assert resp.status_code == 200, resp.text
    cleared = set_cookies(resp)
    assert {"tm_token", "tm_csrf"} <= set(cleared)
    for name in ("tm_token", "tm_csrf"):
        morsel = cleared[name]
        assert morsel.value == "" or morsel["max-age"] in ("0", 0) or morsel["expires"], morsel
    assert api.session is not None and "tm_token" not in api.session.cookies
    error_of(api.send("GET", "task_manager/list_modules"), 401, "UNAUTHENTICATED")


# ---- streams -------------------------------------------------------------------------------


def test_streams_obey_roles(port: int, tasks: Tasks) -> None:
    task = tasks.backup.create("backup", "dump")
    params = {"module": "backup"}
    error_of(api_as(port, None).send("GET", "tm/v1/watch", params), 401, "UNAUTHENTICATED")
    narrow = api_as(port, "repair_reader")
    error_of(narrow.send("GET", "tm/v1/watch", params), 403, "PERMISSION_DENIED")
    # Every module's changes need a reader of every module.
    error_of(narrow.send("GET", "tm/v1/watch"), 403, "PERMISSION_DENIED")
    error_of(narrow.send("GET", f"tm/v1/wait/{task}"), 403, "PERMISSION_DENIED")
    with SseStream.open(narrow, "tm/v1/watch", {"module": "repair", "snapshot": "true"}) as s:
        assert s.next() is not None
    with SseStream.open(api_as(port, "reader"), "tm/v1/watch", {**params, "snapshot": "true"}) as s:
        first = s.next()
        assert first is not None and first.event == "batch"
        assert [e["task"]["task_id"] for e in first.data["events"]] == [task]
    # A browser's EventSource sends no headers: the login cookie is enough.
    browser, resp = login(port, "reader")
    assert resp.status_code == 200
    with SseStream.open(browser, f"tm/v1/wait/{task}") as s:
        status = s.next()
        assert status is not None and status.event == "status" and status.data["id"] == task


# ---- TLS -----------------------------------------------------------------------------------


def test_tls_serves_https_only(tmp_path: Path, tokens: Path) -> None:
    certs = make_certs(tmp_path / "pki")
    thread = start_http_server(tls=TlsConfig(certs.server_cert, certs.server_key), tokens=tokens)
    try:
        port = http_port(thread)
        secure = RestApi(port, scheme="https", host="localhost", verify=str(certs.ca),
                         headers=bearer("reader"))  # fmt: skip
        assert "test" in secure.json("GET", "task_manager/list_modules")
        error_of(RestApi(port, scheme="https", host="localhost", verify=str(certs.ca)).send(
            "GET", "task_manager/list_modules"), 401)  # fmt: skip
        with pytest.raises(requests.ConnectionError):
            api_as(port, "reader").send("GET", "task_manager/list_modules", timeout=5)
        # A CA that did not sign the server's certificate: no connection.
        with pytest.raises(requests.exceptions.SSLError):
            RestApi(port, scheme="https", host="localhost", verify=str(certs.other_ca)).send(
                "GET", "task_manager/list_modules", timeout=5
            )
        # Under TLS the login cookie is Secure.
        session = requests.Session()
        browser = RestApi(port, scheme="https", host="localhost", verify=str(certs.ca),
                          session=session)  # fmt: skip
        resp = browser.send("POST", "tm/v1/login", data={"token": token_of("reader")})
        assert resp.status_code == 200, resp.text
        token = set_cookies(resp)["tm_token"]
        assert token["secure"] is True and token["httponly"] is True
        assert browser.json("GET", "tm/v1/whoami")["principal"] == "reader"
    finally:
        thread.stop()


# ---- audit ---------------------------------------------------------------------------------


def test_an_abort_over_http_is_audited(
    port: int, tasks: Tasks, caplog: pytest.LogCaptureFixture
) -> None:
    task = tasks.backup.create("backup", "dump", abortable=True)
    with caplog.at_level(logging.INFO, logger="tm.audit"):
        refused = api_as(port, "reader").send("POST", f"task_manager/abort_task/{task}")
        assert refused.status_code == 403
        resp = api_as(port, "operator").send(
            "POST", f"task_manager/abort_task/{task}", {"reason": "disk replaced"}
        )
        assert resp.status_code == 200, resp.text
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "tm.audit"]
    assert [(a["principal"], a["action"], a["task_id"], a["outcome"]) for a in lines] == [
        ("reader", "AbortTask", task, "PERMISSION_DENIED"),
        ("operator", "AbortTask", task, "OK"),
    ]
    assert lines[1]["reason"] == "disk replaced"
    assert all(a["time"].endswith("Z") and a["peer"] for a in lines)


def test_the_dashboard_loads_without_a_token(port: int) -> None:
    resp = api_as(port, None).send("GET", "")
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("text/html")


def test_a_client_certificate_identifies_the_caller(tmp_path: Path) -> None:
    certs = make_certs(tmp_path / "pki")
    roles = tmp_path / "roles.toml"
    # One principal known by its certificate (no tokens), one by its token.
    roles.write_text(
        '[[principal]]\nname = "backup-agent"\nroles = ["reader:backup"]\n\n'
        f'[[principal]]\nname = "reader"\nroles = ["reader"]\n'
        f'tokens = ["{hash_token(token_of("reader"))}"]\n'
    )
    tls = TlsConfig(certs.server_cert, certs.server_key, client_ca=certs.ca)
    thread = start_http_server(tls=tls, tokens=roles)
    try:
        port = http_port(thread)
        agent = RestApi(port, scheme="https", host="localhost", verify=str(certs.ca))
        me = agent.json("GET", "tm/v1/whoami", cert=tuple(map(str, certs.client("backup-agent"))))
        assert me["principal"] == "backup-agent"
        assert me["grants"] == [{"role": "reader", "modules": ["backup"]}]
        # Without a certificate (a browser), a token still identifies its holder.
        with_token = RestApi(port, scheme="https", host="localhost", verify=str(certs.ca),
                             headers=bearer("reader"))  # fmt: skip
        assert with_token.json("GET", "tm/v1/whoami")["principal"] == "reader"
    finally:
        thread.stop()


@pytest.mark.slow
def test_a_stream_ends_with_an_error_event_when_its_token_goes(
    port: int, tasks: Tasks, tokens: Path
) -> None:
    task = tasks.backup.create("backup", "dump")
    reader = api_as(port, "reader")
    with (
        SseStream.open(reader, "tm/v1/watch", {"module": "backup"}) as watching,
        SseStream.open(reader, f"tm/v1/wait/{task}") as waiting,
    ):
        assert watching.next() is not None and waiting.next() is not None
        # The reader's token leaves the file (re-read within a second of a change).
        text = tokens.read_text()
        kept = [e for e in text.split("[[principal]]") if 'name = "reader"' not in e]
        tokens.write_text("[[principal]]".join(kept))
        for stream in (watching, waiting):
            rest = stream.rest()
            assert rest, "the stream ended without a word"
            assert rest[-1].event == "error", [e.raw for e in rest]
            assert rest[-1].data["reason"] == "UNAUTHENTICATED" and rest[-1].data["code"] == 401
    error_of(reader.send("GET", "task_manager/list_modules"), 401, "UNAUTHENTICATED")
    # Everyone else's calls go on.
    assert api_as(port, "operator").json("GET", "task_manager/ttl") == 60
