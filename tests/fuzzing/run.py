"""A fuzz run: a server on a manual clock, a forest of tasks, a deck of methods."""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast
from uuid import UUID

import grpc
import pytest
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from tm_client.pb import task_manager_pb2, task_manager_test_pb2, task_reporting_pb2
from tm_server.core import ManualClock
from tm_server.core.quotas import TaskQuotas
from tm_server.server import TmServer

from ..error_info import error_info
from ..server_fixture import ServerThread
from .calls import Metadata, Outcome, describe, invoke, problems_of
from .invariants import registry_violations, watch_unregistering
from .messages import ALL_RPCS, SESSION, Rpc, Seen, _find, messages

# ---- a run -----------------------------------------------------------------------------------


@dataclass
class Run:
    """A fuzzing run against one server: its channel, what it saw, what it got."""

    thread: ClockedServerThread
    channel: grpc.Channel
    seen: Seen = field(default_factory=Seen)
    codes: dict[str, Counter[str]] = field(default_factory=dict)
    log: deque[str] = field(default_factory=lambda: deque(maxlen=12))
    # Tasks that left the registry unfinished (see ``watch_unregistering``).
    left_unfinished: list[str] = field(default_factory=list)

    def call(self, rpc: Rpc, request: Message, metadata: Metadata = ()) -> Outcome:
        outcome = invoke(self.channel, rpc, request, metadata)
        self.codes.setdefault(repr(rpc), Counter())[outcome.code.name] += 1
        who = f" as {metadata[0][1][:24]!r}" if metadata else ""
        self.log.append(
            f"{rpc!r}({describe(request)}){who} -> {outcome.code.name} {outcome.details[:200]!r}"
        )
        for reply in outcome.replies:
            self.seen.harvest(reply)
        if outcome.code is grpc.StatusCode.OK:
            self.seen.harvest(request, request=True)
            self.seen.follow(rpc, request, outcome.replies)
            if rpc.name in ("CreateTask", "CreateTestTask") and not _find(request, "task_id"):
                self.seen.server_named.add(
                    UUID(_find(outcome.replies[0], "id") or _find(outcome.replies[0], "task_id"))
                )
        elif outcome.error is not None and not outcome.ours:
            with contextlib.suppress(ValueError):  # a mismatch is reported by problems_of
                info = error_info(outcome.error)
                if info is not None:
                    self.seen.forget(info)
        return outcome

    def must(self, rpc: Rpc, request: Message, metadata: Metadata = ()) -> Message:
        outcome = self.call(rpc, request, metadata)
        assert outcome.code in (grpc.StatusCode.OK, grpc.StatusCode.CANCELLED), self.log[-1]
        return outcome.replies[0]

    def violations(self) -> list[str]:
        named = frozenset(self.seen.server_named)
        found = self.thread.call(lambda: registry_violations(self.thread, named), timeout=30)
        found.extend(self.left_unfinished)
        self.left_unfinished.clear()
        return found


def rpc(name: str) -> Rpc:
    return next(r for r in ALL_RPCS if r.name == name)


def seed_forest(run: Run, metadata: Metadata = ()) -> None:
    """A forest for the calls to reach into: live, created, finished, folded, failed, aborted."""
    tr, pb, tp = task_reporting_pb2, task_manager_pb2, task_manager_test_pb2
    create = rpc("CreateTask")

    def task(parent: str = "", **fields: Any) -> str:
        request = tr.CreateTaskRequest(module="fuzz", type="t", parent_id=parent, **fields)
        reply: Any = run.must(create, request, metadata)
        return str(reply.status.id)

    root = task(start=True, abortable=True)
    child = task(root, start=True)
    task(child, start=True)
    task(root)  # created, not started
    for error in (None, "boom"):  # a done child and a failed one: both fold
        done = task(root, start=True)
        run.must(rpc("FinishTask"), tr.FinishTaskRequest(task_id=done, error=error), metadata)
    task(user_task=True)  # a created root
    kept = task(user_task=True, start=True)
    run.must(rpc("FinishTask"), tr.FinishTaskRequest(task_id=kept), metadata)  # kept an hour
    aborted = task(start=True, abortable=True)
    task(aborted, start=True)
    run.must(rpc("AbortTask"), pb.AbortTaskRequest(task_id=aborted, reason="seed"), metadata)
    opened: Any = run.must(rpc(SESSION), tr.OpenSessionRequest(), metadata)
    task(start=True, session_id=opened.opened.session_id)
    test_root: Any = run.must(rpc("CreateTestTask"), tp.CreateTestTaskRequest(), metadata)
    for error in (None, "boom"):
        child_reply: Any = run.must(
            rpc("CreateTestTask"), tp.CreateTestTaskRequest(parent_id=test_root.task_id), metadata
        )
        if error is not None:
            finish = tp.FinishTestTaskRequest(task_id=child_reply.task_id, error=error)
            run.must(rpc("FinishTestTask"), finish, metadata)
    kept_test: Any = run.must(
        rpc("CreateTestTask"), tp.CreateTestTaskRequest(shard=2, user_task=True), metadata
    )
    run.must(rpc("FinishTestTask"), tp.FinishTestTaskRequest(task_id=kept_test.task_id), metadata)
    run.must(
        rpc("ListModuleTasks"), pb.ListModuleTasksRequest(module="fuzz", page_size=1), metadata
    )
    run.must(
        rpc("ListTaskChildren"), pb.ListTaskChildrenRequest(task_id=root, page_size=1), metadata
    )
    assert run.violations() == []


#: How many times a method comes in each round of the deal (2 unless said here): the
#: methods that make and drive tasks more often, so that the registry grows trees
#: for the other calls to reach into, and those that stop a module less.
WEIGHTS = {
    "CreateTask": 8,
    "CreateTestTask": 6,
    "StartTask": 3,
    "ReportProgress": 3,
    "FinishTask": 4,
    "FinishTestTask": 3,
    "AbortTask": 3,
    "UnregisterModule": 1,
    "UnregisterTestModule": 1,
}


class Deck:
    """The methods a run calls, dealt in rounds shuffled by a fixed seed.

    Not hypothesis's choice: its choices favour some values, and with 32
    methods some would hardly be called. Each round deals every method as
    many times as its weight, so every one is called, in a reproducible order.
    """

    def __init__(self, rpcs: Sequence[Rpc]) -> None:
        self._cards = [rpc for rpc in rpcs for _ in range(WEIGHTS.get(rpc.name, 2))]
        self._random = random.Random(" ".join(rpc.path for rpc in rpcs))
        self._left: list[Rpc] = []

    def deal(self) -> Rpc:
        if not self._left:
            self._left = list(self._cards)
            self._random.shuffle(self._left)
        return self._left.pop()


def fuzz(
    run: Run,
    rpcs: Sequence[Rpc],
    *,
    steps: int,
    callers: Sequence[Metadata] = ((),),
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Calls the methods as ``Deck`` deals them, ``steps`` times, checking the registry after each.

    Each step is a hypothesis run of a few examples of one method's request,
    with a seed of its own (the step's number): reproducible, and varied
    from step to step. A run drawing the method itself would draw a
    different message for the same choices once the method changed, which
    hypothesis refuses (its choices must draw the same way every time).
    """
    deck = Deck(rpcs)
    for step in range(steps):
        method = deck.deal()
        call_examples(run, method, callers, step, caplog)
        run.thread.advance(STEP_SECONDS)
        violations = run.violations()
        assert not violations, report(run, violations, caplog)


#: Examples of one method's request per step, and the time a step takes on the server's clock.
EXAMPLES_PER_STEP = 4
STEP_SECONDS = 0.25


def call_examples(
    run: Run,
    method: Rpc,
    callers: Sequence[Metadata],
    step: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Calls ``method`` with a few generated requests; each must end well."""
    descriptor = cast(Descriptor, method.request.DESCRIPTOR)

    @seed(step)
    @settings(
        max_examples=EXAMPLES_PER_STEP,
        deadline=None,
        database=None,
        phases=(Phase.generate,),  # the server's state moves on: shrinking would not replay
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
            HealthCheck.large_base_example,
        ],
    )
    @given(st.data())
    def example(data: st.DataObject) -> None:
        request = data.draw(messages(descriptor, run.seen), label="request")
        # A listing's next page, a fifth of the time when there is one (drawn
        # either way, so that every example draws the same way).
        pages = run.seen.next_pages.get(method.path, {})
        next_page = data.draw(st.tuples(st.integers(0, 4), st.integers(0, 2**16 - 1)))
        if pages and next_page[0] == 1:
            request = method.request.FromString(list(pages)[-1 - next_page[1] % len(pages)])
        metadata = data.draw(st.sampled_from(callers), label="caller")
        outcome = run.call(method, request, metadata)
        problems = problems_of(method, outcome)
        assert not problems, report(run, problems, caplog)

    example()


def report(run: Run, problems: list[str], caplog: pytest.LogCaptureFixture) -> str:
    errors = [
        f"{r.levelname} {r.name}: {r.getMessage()}\n{r.exc_text or ''}"
        for r in caplog.records
        if r.levelno >= logging.WARNING and r.name.startswith("tm_server")
    ]
    return "\n".join(["", *problems, "", "last calls:", *run.log, "", "server log:", *errors[-5:]])


def still_serves(run: Run, metadata: Metadata = ()) -> None:
    """The server answers health checks and create, progress, status, finish round trips."""
    health = run.channel.unary_unary(
        "/grpc.health.v1.Health/Check",
        request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
        response_deserializer=health_pb2.HealthCheckResponse.FromString,
    )
    assert health(health_pb2.HealthCheckRequest(), timeout=5).status == 1
    tr, pb, tp = task_reporting_pb2, task_manager_pb2, task_manager_test_pb2
    # The run may have left TTLs of 0: finished tasks would leave before they are read.
    run.must(rpc("SetTtl"), pb.SetTtlRequest(ttl_seconds=3600), metadata)
    run.must(rpc("SetUserTtl"), pb.SetUserTtlRequest(user_ttl_seconds=3600), metadata)
    request = tr.CreateTaskRequest(module="after", type="t", start=True)
    created: Any = run.must(rpc("CreateTask"), request, metadata)
    task_id = created.status.id
    progress = tr.ReportProgressRequest(task_id=task_id, completed=1, total=2)
    run.must(rpc("ReportProgress"), progress, metadata)
    status: Any = run.must(rpc("GetTaskStatus"), pb.GetTaskStatusRequest(task_id=task_id), metadata)
    assert status.status.progress_completed == 1
    finished: Any = run.must(rpc("FinishTask"), tr.FinishTaskRequest(task_id=task_id), metadata)
    assert finished.status.state == pb.TASK_STATE_DONE
    run.must(rpc("RegisterTestModule"), tp.RegisterTestModuleRequest(), metadata)
    test_task: Any = run.must(
        rpc("CreateTestTask"), tp.CreateTestTaskRequest(user_task=True), metadata
    )
    run.must(rpc("FinishTestTask"), tp.FinishTestTaskRequest(task_id=test_task.task_id), metadata)
    read = pb.GetTaskStatusRequest(task_id=test_task.task_id)
    final: Any = run.must(rpc("GetTaskStatus"), read, metadata)
    assert final.status.state == pb.TASK_STATE_DONE


def children_pages_agree(run: Run, metadata: Metadata = ()) -> None:
    """Over gRPC: every registered task's status counts the children its pages list.

    ListTaskChildren, two at a time, lists each child once, every page with
    the count the status gives (a task that expires meanwhile is skipped: the
    run may have set a TTL of a second).
    """
    pb = task_manager_pb2

    async def registered() -> list[str]:
        return [str(t.id) for s in run.thread.manager.local_shards for t in s._store.tasks.values()]

    for task_id in run.thread.call(registered):
        read: Any = run.call(
            rpc("GetTaskStatus"), pb.GetTaskStatusRequest(task_id=task_id), metadata
        )
        if read.code is not grpc.StatusCode.OK:
            assert read.code is grpc.StatusCode.NOT_FOUND, run.log[-1]
            continue
        count = read.replies[0].status.children_count
        listed: list[str] = []
        token = ""
        for _ in range(count + 1):
            request = pb.ListTaskChildrenRequest(task_id=task_id, page_size=2, page_token=token)
            outcome = run.call(rpc("ListTaskChildren"), request, metadata)
            if outcome.code is grpc.StatusCode.NOT_FOUND:  # it expired meanwhile
                break
            assert outcome.code is grpc.StatusCode.OK, run.log[-1]
            page: Any = outcome.replies[0]
            assert page.children_count == count, run.log[-1]
            listed.extend(child.task_id for child in page.children)
            token = page.next_page_token
            if not token:
                assert len(listed) == len(set(listed)) == count, (task_id, listed, count)
                break
        else:
            raise AssertionError(f"the children of {task_id} take more than {count + 1} pages")


class ClockedServerThread(ServerThread):
    """A ``ServerThread`` whose server keeps time on a manual clock the run moves.

    Leases, TTLs and wait timeouts then run out at the same steps every run,
    not whenever the machine gets there. The clock starts an hour ahead of
    the wall clock (which time-ordered ids take their creation times from),
    so a task's creation never comes after its start or end on it.
    """

    def __init__(self, **config: Any) -> None:
        super().__init__(**config)
        self.clock = ManualClock(time.time() + 3600)

    def start(self) -> ClockedServerThread:
        self._thread.start()

        async def boot() -> int:
            self.server = TmServer(self.config, clock=self.clock)
            return await self.server.start()

        self.port = self.call(boot)
        return self

    def advance(self, seconds: float) -> None:
        """Moves the clock on the server's loop, firing the timers that fall due."""

        async def tick() -> None:
            self.clock.advance(seconds)

        self.call(tick)


def start_run(**config: Any) -> Run:
    """A server to fuzz (small status and children limits, to reach them) and a channel."""
    config.setdefault("max_status_children", 3)
    config.setdefault("task_ttl", 60)  # finished roots stay a while (the run changes it)
    config.setdefault("quotas", TaskQuotas(max_tasks=3000, max_children=8))
    thread = ClockedServerThread(**config).start()
    run = Run(thread, grpc.insecure_channel(thread.target))
    for shard in thread.manager.local_shards:
        watch_unregistering(shard._store, run.left_unfinished)
    return run


PRINCIPALS = {
    "root": ["operator", "test", "node"],
    "producer": ["producer:fuzz", "producer:test"],
    "other": ["producer:fuzz"],
    "reader": ["reader:fuzz"],
    "nobody": [],
}


def metadata_for(name: str) -> Metadata:
    """The call metadata of a principal of ``PRINCIPALS`` (its token is "token-of-NAME")."""
    return (("authorization", f"Bearer token-of-{name}"),)
