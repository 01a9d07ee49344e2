"""Module watches on a cluster: a node's watch covers its regular tasks and every cluster task."""

from __future__ import annotations

import threading
from typing import Any

import grpc
import pytest

from tm_client.pb import task_manager_pb2 as pb
from tm_client.pb import task_manager_pb2_grpc as pb_grpc

from .cluster_fixture import Cluster, eventually

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def test_a_watch_on_one_node_sees_cluster_tasks_made_through_another(cluster: Cluster) -> None:
    events: list[pb.TaskEvent] = []
    lock = threading.Lock()
    with cluster.producer("a") as pa, cluster.producer("b") as pb_:
        pa.create_task("warm-up").finish()  # the module exists on the cluster
        channel = grpc.insecure_channel(cluster.target("b"))
        call: Any = pb_grpc.TaskManagerServiceStub(channel).WatchTasks(
            pb.WatchTasksRequest(module=pa.module), timeout=100
        )

        def read() -> None:
            try:
                for response in call:
                    with lock:
                        events.extend(response.events)
            except grpc.RpcError:
                pass

        reader = threading.Thread(target=read, daemon=True)
        reader.start()

        def latest() -> dict[str, pb.TaskEvent]:
            with lock:
                return {e.task.task_id: e for e in events}

        root = pa.create_task("upgrade", scope="cluster", cluster=True, total=2)
        local = pb_.create_task("compaction")  # a regular task of node b
        elsewhere = pa.create_task("compaction")  # a regular task of node a: not b's
        eventually(lambda: str(root.id) in latest() or None, what="the cluster task on b's watch")
        seen = latest()[str(root.id)]
        assert seen.task.kind == pb.TASK_KIND_CLUSTER and seen.task.module == pa.module
        root.progress(1)
        eventually(
            lambda: latest()[str(root.id)].task.progress_completed == 1 or None,
            what="the cluster task's progress on b's watch",
        )
        root.finish()
        final = eventually(
            lambda: (
                ((e := latest()[str(root.id)]).type == pb.TASK_EVENT_TYPE_FINISHED and e) or None
            ),
            what="the cluster task's end on b's watch",
        )
        assert final.task.state == pb.TASK_STATE_DONE
        assert str(local.id) in latest() and str(elsewhere.id) not in latest()
        local.finish()
        elsewhere.finish()
        call.cancel()
        reader.join(5)
        channel.close()
