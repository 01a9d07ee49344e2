"""Progress: a task's own, and the roll-up of a parent's from its children, on any shard.

As in ScyllaDB, a task without children reports its own progress (or none of
its expected total), and a parent the sum of its children's: folded ones as
they folded, live ones asked on their shards, with the parent's own expected
total replacing the sum's while it runs. Each parent caches the sum at its
version (any change below bumps the versions above it), so a tree is summed
once per change, not once per read.

The roll-up is a loop over an explicit stack, one ``progress_step`` call per
task whose sum is stale: a chain of any depth needs no nested calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from uuid import UUID

from .port import ChildRef, ProgressStep, ShardPort
from .record import Task
from .types import NO_PROGRESS, Progress
from .validation import MAX_PROGRESS


def known_total(task: Task) -> float | None:
    """The total a producer reported, else the implementation's expected workload."""
    if task.reported_total is not None:
        return task.reported_total
    expected = task.impl.expected_total_workload()
    if expected is None or not 0.0 <= expected <= MAX_PROGRESS:
        return None  # an implementation's inf or NaN is no known total
    return expected


def leaf_progress(task: Task) -> Progress:
    """The progress of a task without children: reported, else none of its expected total."""
    if task.reported is not None:
        return task.reported  # the task's own progress, as specific types override it
    if task.state.is_complete:
        return NO_PROGRESS
    leaf_total = known_total(task)
    return NO_PROGRESS if leaf_total is None else Progress(0.0, leaf_total)


def with_own_total(task: Task, children_sum: Progress) -> Progress:
    """A parent's progress from its children's sum.

    While it runs, a known total replaces the sum's.
    """
    if task.state.is_complete:
        return children_sum
    expected = known_total(task)
    return children_sum if expected is None else Progress(children_sum.completed, expected)


def folded_sum(task: Task) -> Progress:
    """The progress the task's folded children had when they folded, summed."""
    total = NO_PROGRESS
    for folded in task.folded_children or ():
        total = total + folded.status.progress
    return total


def first_step(task: Task) -> ProgressStep:
    """What the owner shard can say of a task's progress without asking another task."""
    if not task.has_children:
        return ProgressStep(leaf_progress(task))
    if not task.rolled_up_is_stale:
        assert task.children_progress is not None
        return ProgressStep(with_own_total(task, task.children_progress[1]))
    return ProgressStep(
        None, task.version, folded_sum(task), tuple((task.live_children or {}).items())
    )


def finish_step(task: Task, version: int, children_sum: Progress) -> Progress:
    """Caches a finished roll-up (if nothing changed meanwhile) and returns the progress."""
    if task.version == version:
        task.children_progress = (version, children_sum)
    return with_own_total(task, children_sum)


@dataclass(slots=True)
class _Frame:
    task_id: UUID
    shard: int
    version: int
    total: Progress
    children: tuple[ChildRef, ...]
    next: int = field(default=0)


async def roll_up_from(
    peers: Sequence[ShardPort], task_id: UUID, shard: int, step: ProgressStep
) -> Progress:
    """A task's progress from its first step, summing every stale subtree below it.

    A loop over an explicit stack, one port call per task: the tree may be as
    deep as it likes.
    """
    if step.progress is not None:
        return step.progress
    assert step.folded is not None
    stack = [_Frame(task_id, shard, step.version, step.folded, step.children)]
    result = NO_PROGRESS
    while stack:
        frame = stack[-1]
        if frame.next < len(frame.children):
            child_id, child_shard = frame.children[frame.next]
            frame.next += 1
            child = await peers[child_shard].progress_step(child_id)
            if child.progress is not None:
                frame.total = frame.total + child.progress
            else:
                assert child.folded is not None
                stack.append(
                    _Frame(child_id, child_shard, child.version, child.folded, child.children)
                )
            continue
        stack.pop()
        result = await peers[frame.shard].progress_done(frame.task_id, frame.version, frame.total)
        if stack:
            stack[-1].total = stack[-1].total + result
    return result
