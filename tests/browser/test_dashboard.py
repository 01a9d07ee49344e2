"""The dashboard in a real browser, against real ``tm-server`` processes.

Producers report through gRPC while the page watches over HTTP: every change must reach the
page through its streams (no reload, no polling). The responsiveness test measures the page
with 10,000 tasks and 100 progress reports a second; its figures are printed (and written to
``$TM_DASHBOARD_METRICS`` as JSON, for ``make bench``), never asserted on.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import requests
from playwright.sync_api import Locator, Page, expect

from tm_client import Credentials, Producer, TaskAbortedError, TaskManagerClient
from tm_client._ids import new_task_id
from tm_client.pb import task_reporting_pb2 as rpb
from tm_client.pb import task_reporting_pb2_grpc as rpb_grpc

from ..e2e.cluster_fixture import Cluster
from ..e2e.test_security_process import tokens_file
from ..process import ServerProcess
from .conftest import Shot

#: A lone node: no journal, no cluster store, two shards (as CI's two cores); finished
#: tasks stay listed for a while.
LONE = ("--journal", "off", "--store", "none", "--shards", "2", "--task-ttl-in-seconds", "600")


def url(server: ServerProcess, route: str = "") -> str:
    return f"http://127.0.0.1:{server.http_port}/{route}"


def row_of(page: Page, task_id: object, list_id: str = "task-row") -> Locator:
    return page.locator(f'[data-testid="{list_id}"][data-task-id="{task_id}"]')


def snapshot_loaded(page: Page) -> None:
    expect(page.get_by_test_id("tasks")).to_have_attribute("data-snapshot-complete", "true")


@pytest.fixture
def server() -> Iterator[ServerProcess]:
    node = ServerProcess("--node", "solo", *LONE)
    yield node
    node.kill()


# ---- the overview ---------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_the_overview_shows_the_node_the_modules_and_sets_the_ttl(
    server: ServerProcess, page: Page, shot: Shot
) -> None:
    with (
        Producer(server.target, module="backup", timeout=15),
        Producer(server.target, module="repair", timeout=15),
    ):
        page.goto(url(server))
        expect(page.get_by_test_id("node-name")).to_have_text("solo")
        expect(page.get_by_test_id("principal")).to_have_text("anonymous")
        node = page.get_by_test_id("node-row")
        expect(node).to_have_count(1)
        expect(node).to_contain_text("solo")
        expect(node.get_by_test_id("node-state")).to_have_text("alive")
        links = page.get_by_test_id("module-link")
        expect(links).to_contain_text(["backup", "repair"])
        expect(page.get_by_test_id("ttl-value")).to_have_text("600")
        expect(page.get_by_test_id("user-ttl-value")).to_have_text("3600")
        shot(page, "overview")

        # Anonymous on loopback may do everything: the TTL inputs are there, and work.
        page.get_by_label("New Task TTL (seconds)").fill("42")
        page.get_by_role("button", name="Set Task TTL").click()
        expect(page.get_by_test_id("ttl-value")).to_have_text("42")
        with TaskManagerClient(server.target, timeout=15) as client:
            assert client.get_ttl() == 42

        page.get_by_role("link", name="backup").click()
        expect(page).to_have_url(re.compile(r"#/module/backup$"))
        snapshot_loaded(page)


# ---- a module's tasks, live -----------------------------------------------------------------


@pytest.mark.timeout(60)
def test_the_module_page_follows_tasks_without_a_reload(
    server: ServerProcess, page: Page, shot: Shot
) -> None:
    with Producer(server.target, module="backup", timeout=15) as producer:
        early = producer.create_task("backup", scope="keyspace", keyspace="shop", total=2)
        early.finish()
        page.goto(url(server, "#/module/backup"))
        snapshot_loaded(page)
        expect(page.get_by_test_id("task-count")).to_have_text("1")
        page.evaluate("window.sameDocument = true")  # gone if anything reloads the page

        task = producer.create_task(
            "backup", scope="keyspace", keyspace="shop", table="orders", entity="nightly",
            abortable=True, progress_units="tables", total=10,
        )  # fmt: skip
        row = row_of(page, task.id)
        expect(row).to_be_visible()
        expect(page.get_by_test_id("task-count")).to_have_text("2")
        expect(row.get_by_test_id("task-state")).to_have_text("running")
        for done in (3, 7):
            task.progress(done)
            expect(row.get_by_test_id("progress-text")).to_have_text(
                f"{done} / 10"
            )  # no units in a list entry
            bar = row.get_by_role("progressbar")
            expect(bar).to_have_attribute("aria-valuenow", f"{done * 10:.1f}")
        unknown = producer.create_task("backup", keyspace="logs")  # no total: indeterminate
        expect(row_of(page, unknown.id).get_by_role("progressbar")).to_have_class(
            re.compile(r"\bindeterminate\b")
        )
        expect(row_of(page, early.id).get_by_test_id("task-state")).to_have_text("done")
        shot(page, "module")

        # The filters: by state (a new snapshot from the server), then by keyspace.
        page.get_by_test_id("filter-state-done").check()
        expect(page.get_by_test_id("task-count")).to_have_text("1")
        expect(row_of(page, early.id)).to_be_visible()
        expect(row).to_have_count(0)
        page.get_by_test_id("filter-state-done").uncheck()
        page.get_by_label("Keyspace").fill("logs")
        expect(page.get_by_test_id("task-count")).to_have_text("1")
        expect(row_of(page, unknown.id)).to_be_visible()
        unknown.finish("no space left on device")
        expect(row_of(page, unknown.id).get_by_test_id("task-state")).to_have_text("failed")
        page.get_by_label("Keyspace").fill("")
        expect(page.get_by_test_id("task-count")).to_have_text("3")
        # A task that leaves the registry leaves the page.
        with TaskManagerClient(server.target, timeout=15) as client:
            client.set_ttl(0)
        gone = producer.create_task("backup", keyspace="tmp")
        expect(row_of(page, gone.id)).to_be_visible()
        gone.finish()
        expect(row_of(page, gone.id)).to_have_count(0)
        expect(page.get_by_test_id("task-count")).to_have_text("3")
        assert page.evaluate("window.sameDocument") is True

        row.click()
        expect(page).to_have_url(re.compile(f"#/task/{task.id}$"))
        expect(page.get_by_test_id("status-state")).to_have_text("running")
        expect(page.get_by_test_id("task-percent")).to_have_text("70%")
        expect(page.get_by_test_id("task-rate")).to_contain_text("tables/s")
        expect(page.get_by_test_id("task-ended")).to_have_text("—")  # the epoch: unset
        task.progress(10)
        expect(page.get_by_test_id("task-percent")).to_have_text("100%")
        task.finish()
        expect(page.get_by_test_id("status-state")).to_have_text("done")
        expect(page.get_by_test_id("abort-button")).to_have_count(0)  # finished
        assert page.evaluate("window.sameDocument") is True


# ---- a task's page: its tree on two nodes, and abort ---------------------------------------


def _finish_when_aborted(task: Any) -> None:
    """The producer's side of an abort: stop at the next check, fail with the reason."""
    assert task.wait_abort(30), f"{task} was not told of the abort"
    try:
        task.check_abort()
    except TaskAbortedError as exc:
        task.finish(str(exc))


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_the_task_page_shows_children_on_two_nodes_and_aborts(
    tmp_path: Path, page: Page, shot: Shot
) -> None:
    cluster = Cluster(f"sqlite://{tmp_path / 'cluster.db'}", ("a", "b"))
    try:
        with cluster.producer("a") as pa, cluster.producer("b") as pb:
            root = pa.create_task(
                "upgrade", cluster=True, abortable=True, scope="cluster", entity="rolling",
                progress_units="nodes",
            )  # fmt: skip
            on_a = pa.create_task("upgrade", parent=root.id, entity="a", total=4, abortable=True)
            on_b = pb.create_task("upgrade", parent=root.id, entity="b", total=4, abortable=True)
            on_a.progress(1)
            on_b.progress(3)
            page.goto(url(cluster.nodes["a"], f"#/task/{root.id}"))
            expect(page.get_by_test_id("status-state")).to_have_text("running")
            expect(page.get_by_test_id("tree-row")).to_have_count(3)
            expect(row_of(page, on_a.id, "tree-row")).to_have_attribute("data-node", "a")
            expect(row_of(page, on_b.id, "tree-row")).to_have_attribute("data-node", "b")
            expect(row_of(page, on_b.id, "tree-row").get_by_test_id("progress-text")).to_have_text(
                "3 / 4"
            )
            # Live: the header follows the wait stream; the tree is read again after it.
            on_a.progress(3)
            expect(page.get_by_test_id("progress-text").first).to_have_text("6 / 8 nodes")
            expect(row_of(page, on_a.id, "tree-row").get_by_test_id("progress-text")).to_have_text(
                "3 / 4"
            )
            shot(page, "task")

            page.get_by_label("Abort reason").fill("disk replaced")
            page.get_by_role("button", name="Abort task").click()
            workers = [
                threading.Thread(target=_finish_when_aborted, args=(t,)) for t in (on_a, on_b)
            ]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join(30)
            _finish_when_aborted(root)

            expect(page.get_by_test_id("status-state")).to_have_text("failed")
            # A cluster task's status keeps no `abort` record (reason, principal) and its
            # producer is not told the reason, over gRPC as over HTTP: the page shows what the
            # producer failed it with. (A node task's reason: the login test below.)
            expect(page.get_by_test_id("task-error")).to_contain_text("was aborted")
            expect(page.get_by_test_id("abort-button")).to_have_count(0)
            child_b = row_of(page, on_b.id, "tree-row")
            expect(child_b).to_have_attribute("data-state", "failed")
            expect(child_b.get_by_test_id("folded")).to_be_visible()
            expect(child_b.get_by_test_id("tree-node")).to_have_text("b")
    finally:
        cluster.close()


# ---- tokens: login, a reader without abort, an operator with it -----------------------------


@pytest.mark.timeout(60)
def test_login_and_roles_decide_what_the_page_offers(tmp_path: Path, page: Page) -> None:
    tokens = tokens_file(
        tmp_path / "tokens.toml",
        {
            "viewer": ("viewer-token", ["reader"]),
            "agent": ("agent-token", ["producer:backup"]),
            "ops": ("ops-token", ["operator:backup"]),
        },
    )
    server = ServerProcess("--node", "solo", *LONE, "--tokens", str(tokens))
    agent = Credentials(token="agent-token")
    try:
        with Producer(server.target, module="backup", timeout=15, credentials=agent) as producer:
            task = producer.create_task("backup", keyspace="shop", abortable=True, total=5)
            page.goto(url(server, f"#/task/{task.id}"))
            form = page.get_by_test_id("login-form")
            expect(form).to_be_visible()
            page.get_by_label("Token").fill("not-a-token")
            page.get_by_role("button", name="Log in").click()
            expect(page.get_by_test_id("login-error")).to_be_visible()

            page.get_by_label("Token").fill("viewer-token")
            page.get_by_role("button", name="Log in").click()
            expect(page.get_by_test_id("principal")).to_have_text("viewer")
            expect(page.get_by_test_id("status-state")).to_have_text("running")
            page.get_by_role("link", name="Overview").click()
            expect(page.get_by_test_id("ttl-value")).to_have_text("600")
            expect(page.get_by_test_id("ttl-input")).to_have_count(0)  # a reader sets no TTL
            page.go_back()
            expect(page.get_by_test_id("status-state")).to_have_text("running")
            expect(page.get_by_test_id("abort-button")).to_have_count(0)
            # What the page would send, had it a button: refused all the same.
            answer = page.evaluate(
                """async (id) => {
                    const csrf = document.cookie.split("; ").find((c) => c.startsWith("tm_csrf="));
                    const resp = await fetch(`/task_manager/abort_task/${id}?reason=curious`, {
                        method: "POST",
                        headers: { "X-TM-CSRF": csrf ? csrf.slice("tm_csrf=".length) : "" },
                    });
                    return { status: resp.status, body: await resp.json(), csrf: Boolean(csrf) };
                }""",
                str(task.id),
            )
            assert answer["csrf"], "the login set no tm_csrf cookie"
            assert answer["status"] == 403, answer
            assert answer["body"]["reason"] == "PERMISSION_DENIED", answer
            assert answer["body"]["message"]
            with TaskManagerClient(server.target, timeout=15, credentials=agent) as client:
                assert not client.get_status(task.id).abort_requested

            # Log out, then in as an operator of the module: the button is there, and works.
            page.get_by_role("button", name="Log out").click()
            expect(page.get_by_test_id("login-form")).to_be_visible()
            page.get_by_label("Token").fill("ops-token")
            page.get_by_role("button", name="Log in").click()
            expect(page.get_by_test_id("principal")).to_have_text("ops")
            page.get_by_label("Abort reason").fill("maintenance window")
            page.get_by_role("button", name="Abort task").click()
            expect(page.get_by_test_id("abort-info")).to_contain_text("by ops: maintenance window")
            _finish_when_aborted(task)
            expect(page.get_by_test_id("status-state")).to_have_text("failed")
    finally:
        server.kill()


# ---- responsiveness: 10,000 tasks, 100 progress reports a second ----------------------------

TASKS = 10_000
RATE = 100  # progress reports a second
SECONDS = 10

#: In the page: the gaps between animation frames and the lag of a setTimeout(0), until stopped.
PROBE = """() => {
    const gaps = [], lags = [];
    let last = 0, stopped = false;
    const frame = (t) => {
        if (last) gaps.push(t - last);
        last = t;
        if (!stopped) requestAnimationFrame(frame);
    };
    requestAnimationFrame(frame);
    const tick = () => {
        const t0 = performance.now();
        setTimeout(() => {
            lags.push(performance.now() - t0);
            if (!stopped) tick();
        }, 0);
    };
    tick();
    window.tmProbe = () => { stopped = true; return { gaps, lags }; };
}"""


def _request(module: str, i: int, task_id: str, parent: str) -> rpb.CreateTaskRequest:
    fields: dict[str, Any] = {"scope": "table", "keyspace": "ks", "table": f"t{i % 100}"}
    fields |= {"entity": f"part-{i}", "progress_units": "rows", "progress_total": 1000}
    return rpb.CreateTaskRequest(
        module=module, type="scrub", task_id=task_id, parent_id=parent, start=True, **fields
    )


def _create_tasks(target: str, module: str, count: int, parent: str = "") -> list[str]:
    """``count`` running tasks of ``module``, created through pipelined CreateTask calls."""
    ids = [str(new_task_id()) for _ in range(count)]
    with grpc.insecure_channel(target) as channel:
        stub = rpb_grpc.TaskReportingServiceStub(channel)
        stub.RegisterModule(rpb.RegisterModuleRequest(module=module), timeout=15)
        window = 256
        for start in range(0, count, window):
            futures = [
                stub.CreateTask.future(_request(module, i, ids[i], parent), timeout=60)
                for i in range(start, min(start + window, count))
            ]
            for future in futures:
                future.result()
    return ids


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _report_progress(target: str, visible: list[str], others: list[str]) -> dict[str, int]:
    """RATE reports a second for SECONDS: half to rows in view, half elsewhere; the last values."""
    last: dict[str, int] = {}
    with grpc.insecure_channel(target) as channel:
        stub = rpb_grpc.TaskReportingServiceStub(channel)
        start = time.monotonic()
        for n in range(RATE * SECONDS):
            pool = visible if n % 2 == 0 else others
            task_id = pool[(n // 2) % len(pool)]
            done = last.get(task_id, 0) + 1
            stub.ReportProgress(
                rpb.ReportProgressRequest(task_id=task_id, completed=done), timeout=15
            )
            last[task_id] = done
            delay = start + (n + 1) / RATE - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    return last


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_the_module_page_keeps_up_with_10000_tasks(
    server: ServerProcess, page: Page, capsys: pytest.CaptureFixture[str]
) -> None:
    begun = time.monotonic()
    ids = _create_tasks(server.target, "bulk", TASKS)
    created_s = time.monotonic() - begun

    page.add_init_script(f"({PROBE})()")  # from the page's start: the snapshot's load
    begun = time.monotonic()
    page.goto(url(server, "#/module/bulk"))
    snapshot_loaded(page)
    expect(page.get_by_test_id("task-count")).to_have_text(str(TASKS))
    loaded_s = time.monotonic() - begun
    load = page.evaluate("window.tmProbe()")
    rendered = page.get_by_test_id("task-row").count()
    assert rendered < 200, f"{rendered} rows in the document: the list is not virtualised"

    visible = page.eval_on_selector_all(
        '[data-testid="task-row"]', "rows => rows.slice(0, 10).map(r => r.dataset.taskId)"
    )
    assert len(visible) == 10
    others = [i for i in ids[TASKS // 2 :] if i not in visible][:500]
    page.evaluate(PROBE)
    last = _report_progress(server.target, visible, others)
    for task_id in visible:
        expect(row_of(page, task_id).get_by_test_id("progress-text")).to_have_text(
            f"{last[task_id]} / 1000"
        )
    probe = page.evaluate("window.tmProbe()")
    expect(page.get_by_test_id("task-count")).to_have_text(str(TASKS))
    # Scrolling to the end shows the last tasks: the list holds all of them. The page
    # orders by creation time (to the second), then sequence number, which is per shard:
    # the last row is the last by that order, not the last one created.
    listed = requests.get(url(server, "task_manager/list_module_tasks/bulk"), timeout=30).json()
    assert len(listed) == TASKS
    last_row = max(listed, key=lambda e: (e["creation_time"], e["sequence_number"], e["task_id"]))
    page.get_by_test_id("tasks-scroll").evaluate("el => { el.scrollTop = el.scrollHeight; }")
    expect(row_of(page, last_row["task_id"])).to_be_visible()

    gaps, lags = probe["gaps"], probe["lags"]
    metrics = {
        "tasks": TASKS,
        "progress_reports_per_second": RATE,
        "seconds": SECONDS,
        "create_tasks_s": round(created_s, 2),
        "snapshot_to_page_s": round(loaded_s, 2),
        "frames": len(gaps),
        "frame_gap_p50_ms": round(_percentile(gaps, 0.50), 1),
        "frame_gap_p99_ms": round(_percentile(gaps, 0.99), 1),
        "frame_gap_max_ms": round(max(gaps, default=0.0), 1),
        "timeout0_lag_p99_ms": round(_percentile(lags, 0.99), 1),
        "timeout0_lag_max_ms": round(max(lags, default=0.0), 1),
        "rows_in_document": rendered,
        "snapshot_load_frame_gap_max_ms": round(max(load["gaps"], default=0.0), 1),
        "snapshot_load_timeout0_lag_max_ms": round(max(load["lags"], default=0.0), 1),
    }
    _record(capsys, "module page", metrics)


#: This run's figures, by test; written whole to ``$TM_DASHBOARD_METRICS`` after each.
_FIGURES: dict[str, dict[str, Any]] = {}


def _record(capsys: pytest.CaptureFixture[str], name: str, metrics: dict[str, Any]) -> None:
    with capsys.disabled():
        print(f"\ndashboard {name}:", json.dumps(metrics))
    _FIGURES[name] = metrics
    if path := os.environ.get("TM_DASHBOARD_METRICS"):
        Path(path).write_text(json.dumps(_FIGURES, indent=2) + "\n")


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_the_task_page_shows_a_tree_of_10000_children(
    server: ServerProcess, page: Page, capsys: pytest.CaptureFixture[str]
) -> None:
    (root,) = _create_tasks(server.target, "tree", 1)
    children = _create_tasks(server.target, "tree", TASKS, parent=root)

    page.add_init_script(f"({PROBE})()")  # from the page's start: the tree's load counts
    begun = time.monotonic()
    page.goto(url(server, f"#/task/{root}"))
    expect(page.get_by_test_id("tree-count")).to_have_text(f"{TASKS + 1} tasks")
    loaded_s = time.monotonic() - begun
    rendered = page.get_by_test_id("tree-row").count()
    assert rendered < 200, f"{rendered} rows in the document: the tree is not virtualised"
    expect(page.get_by_test_id("tree")).to_have_attribute("aria-rowcount", str(TASKS + 1))
    expect(page.get_by_test_id("tree-row").first).to_have_attribute("data-task-id", root)
    expect(row_of(page, children[0], "tree-row")).to_have_attribute("data-depth", "1")

    page.get_by_test_id("tree-scroll").evaluate("el => { el.scrollTop = el.scrollHeight; }")
    last = page.get_by_test_id("tree-row").last
    expect(last).to_have_attribute("aria-rowindex", str(TASKS + 1))
    assert last.get_attribute("data-task-id") in set(children)
    # A child's change reaches the tree (read again after the root's wait stream moves).
    with grpc.insecure_channel(server.target) as channel:
        stub = rpb_grpc.TaskReportingServiceStub(channel)
        stub.FinishTask(rpb.FinishTaskRequest(task_id=root), timeout=15)
    expect(page.get_by_test_id("status-state")).to_have_text("done")
    probe = page.evaluate("window.tmProbe()")
    gaps, lags = probe["gaps"], probe["lags"]
    _record(
        capsys,
        "task tree",
        {
            "children": TASKS,
            "tree_to_page_s": round(loaded_s, 2),
            "frames": len(gaps),
            "frame_gap_p50_ms": round(_percentile(gaps, 0.50), 1),
            "frame_gap_p99_ms": round(_percentile(gaps, 0.99), 1),
            "frame_gap_max_ms": round(max(gaps, default=0.0), 1),
            "timeout0_lag_max_ms": round(max(lags, default=0.0), 1),
            "rows_in_document": rendered,
        },
    )
