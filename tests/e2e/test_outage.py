"""Producers ride out a tm outage: the link to a running server is cut, then restored."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

import pytest

from tm_client import (
    AsyncTaskManagerClient,
    Producer,
    TaskManagerClient,
    TaskState,
    UnavailableError,
)

from ..netcut import NetCut
from ..process import ServerProcess
from .cluster_fixture import eventually

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


@pytest.fixture
def server() -> Iterator[ServerProcess]:
    proc = ServerProcess("--store", "none", "--user-task-ttl-in-seconds", "600")
    yield proc
    proc.kill()


@pytest.fixture
def link(server: ServerProcess) -> Iterator[NetCut]:
    cut = NetCut(server.target)
    yield cut
    cut.close()


def test_progress_during_an_outage_is_kept_and_sent_when_tm_is_back(
    server: ServerProcess, link: NetCut
) -> None:
    with (
        Producer(link.target, module="backup", outage_seconds=30) as producer,
        TaskManagerClient(server.target) as direct,
    ):
        task = producer.create_task("backup", total=10, user_task=True)
        task.progress(1)
        link.cut()
        started = time.monotonic()
        for done in range(2, 6):
            task.progress(done)  # neither raises nor waits for tm
        assert time.monotonic() - started < 5
        assert direct.get_status(task.id).progress_completed == 1
        link.restore()
        eventually(lambda: direct.get_status(task.id).progress_completed == 5,
                   what="the held-back progress to arrive")  # fmt: skip

        link.cut()
        finishing: list[object] = []
        finisher = threading.Thread(target=lambda: finishing.append(task.finish()))
        finisher.start()
        time.sleep(1.5)  # the finish waits for tm...
        assert not finishing
        link.restore()  # ...and goes through once it is back
        finisher.join(30)
        assert finishing and getattr(finishing[0], "state", None) is TaskState.DONE
        assert direct.get_status(task.id).state is TaskState.DONE


def test_tasks_created_while_tm_is_away_wait_for_it(server: ServerProcess, link: NetCut) -> None:
    with Producer(link.target, module="backup", outage_seconds=30) as producer:
        link.cut()
        threading.Timer(1.0, link.restore).start()
        task = producer.create_task("backup", user_task=True)  # retried until tm is back
        task.progress(1)
        task.finish()
    with TaskManagerClient(server.target) as direct:
        listed = [e for e in direct.list_tasks("backup")]
        assert [(e.task_id, e.state) for e in listed] == [(task.id, TaskState.DONE)]


def _answers(client: TaskManagerClient) -> bool:
    try:
        client.list_modules()
    except UnavailableError:
        return False
    return True


def test_a_finish_gives_up_after_the_outage_limit_logged_or_strict(
    server: ServerProcess, link: NetCut, caplog: pytest.LogCaptureFixture
) -> None:
    with Producer(link.target, module="backup", outage_seconds=1, session=False) as producer:
        task = producer.create_task("backup")
        link.cut()
        with caplog.at_level(logging.ERROR, logger="tm_client._producer"):
            assert task.finish() is None  # the caller's work goes on
        assert "tm stayed unavailable for 1s" in caplog.text
        link.restore()
    # Back through the link before the next producer's 1 s of patience starts (grpc
    # shares the refused connection's backoff between channels to one address).
    with TaskManagerClient(link.target) as probe:
        eventually(lambda: _answers(probe), what="the link to answer again")
    with Producer(
        link.target, module="backup", outage_seconds=1, session=False, strict=True
    ) as strict:
        task = strict.create_task("backup")
        link.cut()
        with pytest.raises(UnavailableError):
            task.finish()
        link.restore()


async def test_an_async_wait_resumes_after_the_link_comes_back(
    server: ServerProcess, link: NetCut
) -> None:
    with Producer(server.target, module="backup") as producer:
        task = producer.create_task("backup", total=2, user_task=True)
        async with AsyncTaskManagerClient(link.target, resume_seconds=30) as client:
            stream = client.watch(task.id, timeout=60)
            first = await anext(stream)
            assert first.state is TaskState.RUNNING
            link.cut()
            task.progress(1)
            task.finish()
            threading.Timer(1.0, link.restore).start()
            rest = [status async for status in stream]
    assert rest[-1].state is TaskState.DONE
    assert [s.state for s in rest].count(TaskState.DONE) == 1
    assert first not in rest


def test_a_finish_that_gave_up_is_sent_once_tm_is_back(server: ServerProcess, link: NetCut) -> None:
    # It used to be dropped: the task stayed running, then failed as "the
    # producer closed its session" although its work had ended.
    with TaskManagerClient(server.target) as direct:
        with Producer(link.target, module="backup", outage_seconds=1) as producer:
            task = producer.create_task("backup", total=4, user_task=True)
            link.cut()
            task.progress(3)  # held back
            assert task.finish() is None
            assert direct.get_status(task.id).state is TaskState.RUNNING
            link.restore()
            eventually(lambda: direct.get_status(task.id).state is TaskState.DONE,
                       what="the held-back finish to arrive")  # fmt: skip
        status = direct.get_status(task.id)
        assert (status.state, status.progress_completed) == (TaskState.DONE, 3)

        with Producer(link.target, module="backup", outage_seconds=1) as producer:
            task = producer.create_task("backup", user_task=True)
            link.cut()
            assert task.finish(error="disk full") is None
            link.restore()
            with TaskManagerClient(link.target) as probe:
                eventually(lambda: _answers(probe), what="the link to answer again")
        # Closed at once: the close sends it if the background had not yet.
        status = direct.get_status(task.id)
        assert (status.state, status.error) == (TaskState.FAILED, "disk full")
