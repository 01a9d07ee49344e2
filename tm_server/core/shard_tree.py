"""How a change in a shard goes up its tree: versions, watchers woken, the feed, parents told.

A shard's half between its reads (``shard_reads``) and its lifecycle
(``shard.py``): every change to a task moves its version, wakes its watches,
goes into the shard's change feed, and reaches its ancestors one port call
a task, as far as their cached progress sums need to hear of it.
"""

from __future__ import annotations

from uuid import UUID

from .feed import ChangeKind, state_code
from .port import ParentKind, ParentLink, ShardHost
from .record import Task
from .shard_reads import ShardReads
from .types import FoldedTask
from .watch import Watches

_CHANGED = ChangeKind.CHANGED
# A change that leaves the task's state as it was (``ShardTree._bump``).
_SAME = -1


class ShardTree(ShardReads):
    """The change propagation of ``Shard`` (which sets these attributes)."""

    host: ShardHost

    def _bump(self, task: Task, before: int | None = _SAME) -> None:
        # ``before``: the state before the change, for the feed (``_SAME``:
        # unchanged; ``None``: the feed heard of it already).
        task.version += 1
        Watches.wake(task)
        if before is not None and task.id.int in self._by_id:
            self._feed.append(
                task.id, _CHANGED, state_code(task.state) if before == _SAME else before
            )

    async def _changed(self, task: Task, before: int | None = _SAME) -> None:
        self._bump(task, before)
        parent = task.parent
        if parent is not None and parent.kind is ParentKind.VIRTUAL:
            self.host.virtual_child_changed(parent.id)
        else:
            await self._propagate(task.regular_parent)

    async def _propagate(self, link: ParentLink | None) -> None:
        # Up the tree one port call a task, as far as the change matters.
        while link is not None:
            link = await self._peers[link.shard].child_changed(link.id)

    def _tell(self, parent: Task) -> ParentLink | None:
        # A change below reached ``parent``. Its ancestors must hear of it only
        # if their cached sums may still hold the old value: when ``parent``'s
        # own sum was stale already, the change that made it stale went up
        # then and made theirs stale too, so the walk stops here (unless
        # someone is watching, who must be woken either way). This keeps
        # building a deep chain linear instead of quadratic.
        go_on = not parent.rolled_up_is_stale or parent.watched
        self._bump(parent)
        return parent.regular_parent if go_on else None

    async def child_changed(self, parent_id: UUID) -> ParentLink | None:
        """Tells a parent that one of its children changed; returns where to tell next."""
        parent = self._store.reachable(parent_id)
        return None if parent is None else self._tell(parent)

    async def fold_child(
        self, parent_id: UUID, child_id: UUID, folded: FoldedTask
    ) -> tuple[bool, ParentLink | None]:
        """Moves a finished child from the parent's live children to its folded ones."""
        parent = self._store.reachable(parent_id)
        if (
            parent is None
            or parent.live_children is None
            or parent.live_children.pop(child_id, None) is None
        ):
            return False, None
        self._store.folded(parent, folded)
        return True, self._tell(parent)
