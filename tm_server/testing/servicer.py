"""TaskManagerTestService: drives the "test" module from outside (off unless enabled)."""

from __future__ import annotations

from tm_client.pb import task_manager_test_pb2 as pb
from tm_client.pb import task_manager_test_pb2_grpc as pb_grpc
from tm_server.core import TaskManager, UnknownModuleError
from tm_server.core.validation import parse_uuid, require_uuid
from tm_server.service.handlers import Context, Servicer, unary

from . import module as tests


class TaskManagerTestServicer(Servicer, pb_grpc.TaskManagerTestServiceServicer):
    """Mirrors ScyllaDB's /task_manager_test endpoints."""

    def __init__(self, manager: TaskManager) -> None:
        super().__init__()
        self._tm = manager

    @unary
    async def RegisterTestModule(
        self, request: pb.RegisterTestModuleRequest, context: Context
    ) -> pb.RegisterTestModuleResponse:
        """Registers module "test" on every shard (a no-op if it is registered)."""
        await tests.register_test_module(self._tm)
        return pb.RegisterTestModuleResponse()

    @unary
    async def UnregisterTestModule(
        self, request: pb.UnregisterTestModuleRequest, context: Context
    ) -> pb.UnregisterTestModuleResponse:
        """Stops module "test"."""
        await tests.unregister_test_module(self._tm)
        return pb.UnregisterTestModuleResponse()

    @unary
    async def CreateTestTask(
        self, request: pb.CreateTestTaskRequest, context: Context
    ) -> pb.CreateTestTaskResponse:
        """Creates and starts a test task."""
        if tests.TEST_MODULE not in await self._tm.list_modules():
            raise UnknownModuleError(tests.TEST_MODULE)
        task_id = await tests.create_test_task(
            self._tm,
            task_id=parse_uuid("task_id", request.task_id, required=False),
            shard=request.shard if request.HasField("shard") else 0,
            parent_id=parse_uuid("parent_id", request.parent_id, required=False),
            keyspace=request.keyspace,
            table=request.table,
            entity=request.entity,
            user_task=request.user_task,
        )
        return pb.CreateTestTaskResponse(task_id=str(task_id))

    @unary
    async def FinishTestTask(
        self, request: pb.FinishTestTaskRequest, context: Context
    ) -> pb.FinishTestTaskResponse:
        """Finishes a test task, failed when an error is given."""
        error = request.error if request.HasField("error") else None
        await tests.finish_test_task(self._tm, require_uuid("task_id", request.task_id), error)
        return pb.FinishTestTaskResponse()

    @unary
    async def DeleteTestTask(
        self, request: pb.DeleteTestTaskRequest, context: Context
    ) -> pb.DeleteTestTaskResponse:
        """Finishes a running test task and unregisters it."""
        await tests.delete_test_task(self._tm, require_uuid("task_id", request.task_id))
        return pb.DeleteTestTaskResponse()
