"""The cluster store's schema, as numbered migrations applied at start."""

from __future__ import annotations


def migrations(*, real: str, boolean: str, serial: str) -> tuple[tuple[str, ...], ...]:
    """The migrations in a dialect's types: each a tuple of statements, version n at n - 1."""
    return (
        (
            f"""CREATE TABLE tm_nodes (
                name TEXT PRIMARY KEY,
                address TEXT NOT NULL,
                version TEXT NOT NULL,
                incarnation TEXT NOT NULL,
                started_at {real} NOT NULL,
                heartbeat_at {real} NOT NULL,
                expires_at {real} NOT NULL,
                left_at {real}
            )""",
            f"""CREATE TABLE tm_cluster_tasks (
                id TEXT PRIMARY KEY,
                parent_id TEXT,
                module TEXT NOT NULL,
                type TEXT NOT NULL,
                scope TEXT NOT NULL,
                keyspace TEXT NOT NULL,
                tbl TEXT NOT NULL,
                entity TEXT NOT NULL,
                state TEXT NOT NULL,
                error TEXT NOT NULL,
                abortable {boolean} NOT NULL,
                user_task {boolean} NOT NULL,
                abort_requested {boolean} NOT NULL,
                progress_units TEXT NOT NULL,
                progress_completed {real},
                progress_total {real},
                created_at {real} NOT NULL,
                started_at {real},
                ended_at {real},
                session_id TEXT,
                session_node TEXT,
                version INTEGER NOT NULL
            )""",
            "CREATE INDEX tm_cluster_tasks_module ON tm_cluster_tasks (module, ended_at)",
            "CREATE INDEX tm_cluster_tasks_parent ON tm_cluster_tasks (parent_id)",
            "CREATE INDEX tm_cluster_tasks_session ON tm_cluster_tasks (session_id)",
            "CREATE INDEX tm_cluster_tasks_session_node ON tm_cluster_tasks (session_node)",
            f"""CREATE TABLE tm_changes (
                seq {serial},
                task_id TEXT NOT NULL,
                at {real} NOT NULL
            )""",
        ),
        (
            # The regular children of cluster tasks that finished on their node,
            # kept until their cluster task is swept (``children.py``). ``status``
            # is the final status as JSON; the columns beside it are copied out of
            # it, so that a cluster task's status and progress read no JSON.
            f"""CREATE TABLE tm_cluster_children (
                id TEXT PRIMARY KEY,
                parent_id TEXT NOT NULL,
                node TEXT NOT NULL,
                created_at {real},
                progress_completed {real} NOT NULL,
                progress_total {real} NOT NULL,
                status TEXT NOT NULL
            )""",
            "CREATE INDEX tm_cluster_children_parent ON tm_cluster_children (parent_id)",
        ),
        (
            # Who created each cluster task: only that principal (or an operator)
            # may drive it, whichever node it asks.
            "ALTER TABLE tm_cluster_tasks ADD COLUMN owner TEXT NOT NULL DEFAULT ''",
        ),
        (
            # Who asked for a cluster task's abort, when and why (and the
            # ancestor whose abort reached it), as a regular task keeps them.
            "ALTER TABLE tm_cluster_tasks ADD COLUMN abort_reason TEXT NOT NULL DEFAULT ''",
            "ALTER TABLE tm_cluster_tasks ADD COLUMN abort_principal TEXT NOT NULL DEFAULT ''",
            f"ALTER TABLE tm_cluster_tasks ADD COLUMN abort_time {real}",
            "ALTER TABLE tm_cluster_tasks ADD COLUMN abort_origin TEXT",
        ),
    )
