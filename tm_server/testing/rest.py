"""ScyllaDB's ``/task_manager_test`` REST paths (served only with ``--enable-test-service``)."""

from __future__ import annotations

from aiohttp import web

from tm_server.core import TaskManager, UnknownModuleError
from tm_server.http import params
from tm_server.http.rest import empty_response, json_response
from tm_server.http.routing import Call, Route, no_fields, task_field

from . import module as tests

_TEST = "/tm.v1.TaskManagerTestService/"


class TestRest:
    """The handlers; the same calls as ``TaskManagerTestServicer``'s."""

    # Not a test class, whatever its name says to pytest.
    __test__ = False

    def __init__(self, manager: TaskManager) -> None:
        self._tm = manager

    def routes(self) -> list[Route]:
        """ScyllaDB's test paths."""
        base = "/task_manager_test"
        return [
            Route("POST", f"{base}/test_module", _TEST + "RegisterTestModule", self.register),
            Route("DELETE", f"{base}/test_module", _TEST + "UnregisterTestModule", self.unregister),
            Route("POST", f"{base}/test_task", _TEST + "CreateTestTask", self.create, no_fields),
            Route("DELETE", f"{base}/test_task", _TEST + "DeleteTestTask", self.delete, task_field),
            Route(
                "POST", f"{base}/finish_test_task/{{task_id}}", _TEST + "FinishTestTask",
                self.finish, task_field,
            ),
        ]  # fmt: skip

    async def register(self, call: Call) -> web.StreamResponse:
        """``POST /task_manager_test/test_module``."""
        await tests.register_test_module(self._tm)
        return empty_response()

    async def unregister(self, call: Call) -> web.StreamResponse:
        """``DELETE /task_manager_test/test_module``."""
        await tests.unregister_test_module(self._tm)
        return empty_response()

    async def create(self, call: Call) -> web.StreamResponse:
        """``POST /task_manager_test/test_task``: the new task's id, as a JSON string."""
        request = call.request
        if tests.TEST_MODULE not in await self._tm.list_modules():
            raise UnknownModuleError(tests.TEST_MODULE)
        task_id = await tests.create_test_task(
            self._tm,
            task_id=params.optional_uuid(request, "task_id"),
            shard=params.integer(request, "shard", minimum=0) or 0,
            parent_id=params.optional_uuid(request, "parent_id"),
            keyspace=params.text(request, "keyspace"),
            table=params.text(request, "table"),
            entity=params.text(request, "entity"),
            user_task=params.flag(request, "user_task"),
        )
        return json_response(str(task_id))

    async def delete(self, call: Call) -> web.StreamResponse:
        """``DELETE /task_manager_test/test_task?task_id=``."""
        await tests.delete_test_task(self._tm, params.task_id(call.request))
        return empty_response()

    async def finish(self, call: Call) -> web.StreamResponse:
        """``POST /task_manager_test/finish_test_task/{task_id}[?error=]``."""
        request = call.request
        error = request.query.get("error")
        await tests.finish_test_task(self._tm, params.task_id(request), error)
        return empty_response()


__all__ = ["TestRest"]
