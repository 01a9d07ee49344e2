"""Producers ride out a tm outage: the link to a running server is cut, then restored."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Iterator

import pytest

from tm_client import (
    AsyncTaskManagerClient,
    Producer,
    TaskManagerClient,
    TaskNotFoundError,
    TaskState,
    UnavailableError,
)
from tm_client._producer import PROGRESS_TIMEOUT
from tm_client._resume import WAIT_GRACE_SECONDS

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
    with TaskManagerClient(link.target, retry_seconds=0) as probe:
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
            with TaskManagerClient(link.target, retry_seconds=0) as probe:
                eventually(lambda: _answers(probe), what="the link to answer again")
        # Closed at once: the close sends it if the background had not yet.
        status = direct.get_status(task.id)
        assert (status.state, status.error) == (TaskState.FAILED, "disk full")


@contextlib.contextmanager
def frozen(server: ServerProcess) -> Iterator[None]:
    """The server stopped (SIGSTOP): its connections stay open, and nothing answers."""
    server.proc.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        server.proc.send_signal(signal.SIGCONT)


def test_a_finish_whose_reply_was_lost_does_not_raise_once_tm_forgot_the_task(
    server: ServerProcess, link: NetCut
) -> None:
    # The task TTL is 0: the finish that went through made tm forget the task,
    # and the retry's NOT_FOUND used to escape the producer's block.
    with (
        Producer(link.target, module="backup", session=False, outage_seconds=10) as producer,
        TaskManagerClient(server.target) as direct,
    ):
        task = producer.create_task("backup")
        link.lose_next_reply()
        assert task.finish() is None
        with pytest.raises(TaskNotFoundError):
            direct.get_status(task.id)
        kept = producer.create_task("backup", user_task=True)  # a user task outlives its finish
        link.lose_next_reply()
        final = kept.finish()
        assert final is not None and final.state is TaskState.DONE


def test_a_frozen_tm_neither_blocks_progress_nor_loses_the_finish(
    server: ServerProcess,
) -> None:
    with (
        Producer(
            server.target, module="backup", session=False, outage_seconds=3, timeout=2
        ) as producer,
        TaskManagerClient(server.target) as direct,
    ):
        task = producer.create_task("backup", total=10, user_task=True)
        task.progress(1)
        with frozen(server):
            started = time.monotonic()
            task.progress(2)  # unanswered: held back after PROGRESS_TIMEOUT
            assert time.monotonic() - started < PROGRESS_TIMEOUT + 2
            started = time.monotonic()
            task.progress(3)  # tm is known to be away: held back at once
            assert time.monotonic() - started < 0.5
            started = time.monotonic()
            assert task.finish() is None  # given up on, logged, not raised
            assert time.monotonic() - started < 3 + 2 + 2  # outage_seconds and one try
        eventually(lambda: direct.get_status(task.id).state is TaskState.DONE,
                   what="the held-back finish to arrive")  # fmt: skip
        assert direct.get_status(task.id).progress_completed == 3


def test_a_wait_with_a_timeout_ends_by_it_when_tm_is_frozen_or_away(
    server: ServerProcess, link: NetCut
) -> None:
    with Producer(server.target, module="backup") as producer:
        task = producer.create_task("backup", user_task=True)
        with TaskManagerClient(server.target) as client, frozen(server):
            started = time.monotonic()
            with pytest.raises(UnavailableError, match="did not answer"):
                client.wait(task.id, timeout=1)
            assert time.monotonic() - started < 1 + WAIT_GRACE_SECONDS + 2
        with TaskManagerClient(link.target, resume_seconds=30) as client:
            assert client.get_status(task.id).state is TaskState.RUNNING
            link.cut()
            started = time.monotonic()
            with pytest.raises(UnavailableError):
                client.wait(task.id, timeout=1)  # the resume keeps the wait's timeout
            assert time.monotonic() - started < 3
            link.restore()


def test_reads_ride_out_a_short_outage(server: ServerProcess, link: NetCut) -> None:
    with Producer(server.target, module="backup") as producer:
        task = producer.create_task("backup", user_task=True)
        with (
            TaskManagerClient(link.target) as client,
            TaskManagerClient(link.target, retry_seconds=0) as impatient,
        ):
            assert client.get_status(task.id).state is TaskState.RUNNING
            link.cut()
            with pytest.raises(UnavailableError):
                impatient.get_status(task.id)
            threading.Timer(1.0, link.restore).start()
            assert client.get_status(task.id).state is TaskState.RUNNING


def test_an_outage_longer_than_the_lease_does_not_end_the_producers_work(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = ServerProcess("--store", "none", "--user-task-ttl-in-seconds", "600",
                           "--producer-lease-seconds", "1")  # fmt: skip
    link = NetCut(server.target)
    try:
        with (
            Producer(link.target, module="backup", outage_seconds=30) as producer,
            TaskManagerClient(server.target) as direct,
        ):
            task = producer.create_task("backup", total=3, user_task=True)
            task.progress(1)
            link.cut()
            task.progress(2)
            # The lease runs out while the producer is away: tm fails its task.
            eventually(lambda: direct.get_status(task.id).state is TaskState.FAILED,
                       what="the lease to run out")  # fmt: skip
            link.restore()
            with caplog.at_level(logging.WARNING, logger="tm_client._producer"):
                eventually(lambda: producer._pending == {}, what="the held-back progress")
                task.progress(3)  # the producer's work goes on
                with task.child("backup", table="t") as child:  # tm takes no child of it
                    child.progress(1)
                final = task.finish()
            assert final is not None and final.state is TaskState.FAILED
            assert "producer lost" in final.error
            assert caplog.text.count(f"tm had ended task {task.id}") == 1
            assert direct.get_status(task.id).children == ()
            with pytest.raises(TaskNotFoundError):
                direct.get_status(child.id)
    finally:
        link.close()
        server.kill()
