"""The one table of RPC to role: what each call needs of its caller.

Every method of every service the server registers is here (a test walks the
services' descriptors); ``AuthInterceptor`` (``auth.py``) enforces it. A rule
names the role and where the request says what the call touches, so that a
role limited to modules and a task's owner are checked in the same place:

- ``module``: a request field naming a module;
- ``task``: a request field naming a task, whose module is checked;
- ``owned``: the task must also be the caller's own (or the caller an
  operator on its module): start, report, finish, and children under it;
- ``session``: a request field naming a producer session, which must be
  the caller's own;
- ``every_module``: a node-wide change (the TTLs): the role must not be
  limited to modules;
- ``audited``: an operator action, logged to the audit log with its outcome.
"""

from __future__ import annotations

from dataclasses import dataclass

from tm_server.security.roles import Role


@dataclass(frozen=True, slots=True)
class Rule:
    """What a method needs: a role (``None``: anyone, even unauthenticated) and its targets."""

    role: Role | None
    module: str | None = None
    task: str | None = None
    owned: bool = False
    session: str | None = None
    every_module: bool = False
    audited: bool = False


_TM = "/tm.v1.TaskManagerService/"
_REPORTING = "/tm.v1.TaskReportingService/"
_NODE = "/tm.v1.NodeService/"
_TEST = "/tm.v1.TaskManagerTestService/"
_PUBLIC = Rule(None)

READER, PRODUCER, OPERATOR = Role.READER, Role.PRODUCER, Role.OPERATOR

#: Full method name -> rule.
ACCESS: dict[str, Rule] = {
    # Reading: any reader; a task's or a module's, a reader of that module.
    _TM + "ListModules": Rule(READER),
    _TM + "ListModuleTasks": Rule(READER, module="module"),
    _TM + "GetTaskStatus": Rule(READER, task="task_id"),
    _TM + "WaitTask": Rule(READER, task="task_id"),
    _TM + "GetTaskStatusRecursive": Rule(READER, task="task_id"),
    # Every module's changes (an empty module) need a reader of every module.
    _TM + "WatchTasks": Rule(READER, module="module"),
    _TM + "ListTaskChildren": Rule(READER, task="task_id"),
    _TM + "GetTtl": Rule(READER),
    _TM + "GetUserTtl": Rule(READER),
    _TM + "ListNodes": Rule(READER),
    # Operating: audited.
    _TM + "AbortTask": Rule(OPERATOR, task="task_id", audited=True),
    _TM + "SetTtl": Rule(OPERATOR, every_module=True, audited=True),
    _TM + "SetUserTtl": Rule(OPERATOR, every_module=True, audited=True),
    _TM + "DrainModuleTasks": Rule(OPERATOR, module="module", audited=True),
    _REPORTING + "UnregisterModule": Rule(OPERATOR, module="module", audited=True),
    # Producing: a producer of the module, on its own tasks and sessions.
    _REPORTING + "RegisterModule": Rule(PRODUCER, module="module"),
    _REPORTING + "CreateTask": Rule(
        PRODUCER, module="module", task="parent_id", owned=True, session="session_id"
    ),
    _REPORTING + "StartTask": Rule(PRODUCER, task="task_id", owned=True),
    _REPORTING + "ReportProgress": Rule(PRODUCER, task="task_id", owned=True),
    _REPORTING + "FinishTask": Rule(PRODUCER, task="task_id", owned=True),
    _REPORTING + "OpenSession": Rule(PRODUCER, session="session_id"),
    _REPORTING + "CloseSession": Rule(PRODUCER, session="session_id"),
    # Between the nodes of a cluster.
    _NODE + "GetLocalStatus": Rule(Role.NODE),
    _NODE + "WaitLocal": Rule(Role.NODE),
    _NODE + "AbortLocal": Rule(Role.NODE),
    _NODE + "GetLocalTree": Rule(Role.NODE),
    _NODE + "ListLocalChildren": Rule(Role.NODE),
    _NODE + "GetClusterChildren": Rule(Role.NODE),
    # The test service.
    _TEST + "RegisterTestModule": Rule(Role.TEST),
    _TEST + "UnregisterTestModule": Rule(Role.TEST),
    _TEST + "CreateTestTask": Rule(Role.TEST),
    _TEST + "FinishTestTask": Rule(Role.TEST),
    _TEST + "DeleteTestTask": Rule(Role.TEST),
    # Health (load balancers, orchestrators) and reflection (the schema, which
    # is public): open to anyone; reflection can be turned off.
    "/grpc.health.v1.Health/Check": _PUBLIC,
    "/grpc.health.v1.Health/Watch": _PUBLIC,
    "/grpc.health.v1.Health/List": _PUBLIC,
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": _PUBLIC,
}


__all__ = ["ACCESS", "Rule"]
