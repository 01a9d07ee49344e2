"""The test-only API: ScyllaDB's "test" module and ``TaskManagerTestService``.

Product code imports this package only when a server is started with
``--enable-test-service``; embedding code and tests may use it directly.
"""

from .module import (
    TEST_MODULE,
    TestTaskImpl,
    create_test_task,
    delete_test_task,
    finish_test_task,
    register_test_module,
    unregister_test_module,
)

__all__ = [
    "TEST_MODULE",
    "TestTaskImpl",
    "create_test_task",
    "delete_test_task",
    "finish_test_task",
    "register_test_module",
    "unregister_test_module",
]
