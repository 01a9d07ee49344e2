"""TaskReportingService: producers create, start, advance and finish tasks, and hear of aborts."""

from __future__ import annotations

from collections.abc import AsyncIterator
from uuid import UUID

from tm_client.pb import task_reporting_pb2 as pb
from tm_client.pb import task_reporting_pb2_grpc as pb_grpc
from tm_server.core import TaskManagerError
from tm_server.core.producers import Producers

from .auth import caller_name
from .convert import fill_status, lease_duration, parse_uuid, require_uuid, spec_from_pb
from .handlers import Context, Servicer, streaming, unary

#: The two replies of a progress report, made once: every report sends one,
#: and a reply is only ever serialized, never changed.
_REPORTED = {
    False: pb.ReportProgressResponse(abort_requested=False),
    True: pb.ReportProgressResponse(abort_requested=True),
}


class TaskReportingServicer(Servicer, pb_grpc.TaskReportingServiceServicer):
    """The producer API."""

    def __init__(self, producers: Producers) -> None:
        super().__init__()
        self._producers = producers

    @unary
    async def RegisterModule(
        self, request: pb.RegisterModuleRequest, context: Context
    ) -> pb.RegisterModuleResponse:
        """Registers a module."""
        created = await self._producers.register_module(request.module)
        return pb.RegisterModuleResponse(created=created)

    @unary
    async def UnregisterModule(
        self, request: pb.UnregisterModuleRequest, context: Context
    ) -> pb.UnregisterModuleResponse:
        """Stops a module."""
        await self._producers.unregister_module(request.module)
        return pb.UnregisterModuleResponse()

    @unary
    async def CreateTask(
        self, request: pb.CreateTaskRequest, context: Context
    ) -> pb.CreateTaskResponse:
        """Creates (and maybe starts) a task; idempotent with a task id."""
        status, created = await self._producers.create_task(
            spec_from_pb(request, caller_name()),
            session_id=parse_uuid("session_id", request.session_id, required=False),
            start=request.start,
        )
        response = pb.CreateTaskResponse(created=created)
        fill_status(response.status, status)
        return response

    @unary
    async def StartTask(
        self, request: pb.StartTaskRequest, context: Context
    ) -> pb.StartTaskResponse:
        """Starts a created task."""
        status = await self._producers.start_task(require_uuid("task_id", request.task_id))
        response = pb.StartTaskResponse()
        fill_status(response.status, status)
        return response

    @unary
    async def ReportProgress(
        self, request: pb.ReportProgressRequest, context: Context
    ) -> pb.ReportProgressResponse:
        """Records a running task's progress."""
        aborting = await self._producers.report_progress(
            require_uuid("task_id", request.task_id),
            request.completed,
            request.total if request.HasField("total") else None,
        )
        return _REPORTED[aborting]

    @unary
    async def FinishTask(
        self, request: pb.FinishTaskRequest, context: Context
    ) -> pb.FinishTaskResponse:
        """Finishes a running task."""
        status = await self._producers.finish_task(
            require_uuid("task_id", request.task_id),
            request.error if request.HasField("error") else None,
            suspended=request.suspended,
        )
        response = pb.FinishTaskResponse()
        fill_status(response.status, status)
        return response

    @unary
    async def CloseSession(
        self, request: pb.CloseSessionRequest, context: Context
    ) -> pb.CloseSessionResponse:
        """Ends a session cleanly."""
        failed = await self._producers.close_session(require_uuid("session_id", request.session_id))
        return pb.CloseSessionResponse(failed_count=failed)

    async def _abort_of(self, task_id: UUID) -> pb.AbortRequested:
        # Who asked and why: read off the task's status (aborts are rare).
        message = pb.AbortRequested(task_id=str(task_id))
        try:
            status = await self._producers.manager.get_status(task_id)
        except TaskManagerError:
            return message  # it went meanwhile: the id is what the producer needs
        if status.abort is not None:
            message.reason = status.abort.reason
            message.principal = status.abort.principal
        return message

    @streaming
    async def OpenSession(
        self, request: pb.OpenSessionRequest, context: Context
    ) -> AsyncIterator[pb.OpenSessionResponse]:
        """Opens or resumes a session and streams abort requests for its tasks."""
        session_id = parse_uuid("session_id", request.session_id, required=False)
        stream = self._producers.open_session(session_id, owner=caller_name())
        try:
            yield pb.OpenSessionResponse(
                opened=pb.SessionOpened(
                    session_id=str(stream.session.id),
                    lease=lease_duration(self._producers.lease_seconds),
                    resumed=stream.resumed,
                )
            )
            # Shutdown ends the wait with ShuttingDownError (UNAVAILABLE).
            while (task_id := await stream.next_abort()) is not None:
                yield pb.OpenSessionResponse(abort_requested=await self._abort_of(task_id))
            # None: a newer stream resumed this session; this one ends.
        finally:
            # However the stream ended (the producer crashed included), the lease starts now.
            self._producers.close_stream(stream)
