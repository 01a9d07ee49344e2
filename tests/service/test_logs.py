"""JSON logs of a real server on 127.0.0.1:0: the call named on its lines, audit entries merged."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator
from uuid import uuid4

import pytest

from tm_client import Producer, TaskManagerClient, TaskNotFoundError
from tm_server.logsetup import CallContextFilter, JsonFormatter

from ..server_fixture import ServerThread

pytestmark = pytest.mark.timeout(60)

TMS = "tm.v1.TaskManagerService"


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """What the ``tm`` loggers write, formatted as ``--log-format json`` does."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(CallContextFilter())
    logger = logging.getLogger("tm")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield out
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_json_lines_name_the_call_and_merge_the_audit_entry(json_lines: io.StringIO) -> None:
    server = ServerThread(log_format="json", task_ttl=600).start()
    try:
        with (
            Producer(server.target, module="backup") as producer,
            TaskManagerClient(server.target) as client,
        ):
            task = producer.create_task("snapshot", abortable=True)
            client.abort(task.id)
            with pytest.raises(TaskNotFoundError):
                client.get_status(uuid4())
    finally:
        server.stop()
    lines = [json.loads(line) for line in json_lines.getvalue().splitlines()]
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in lines)
    audit = next(line for line in lines if line["logger"] == "tm.audit")
    assert audit["message"] == "AbortTask OK"
    assert audit["action"] == "AbortTask" and audit["outcome"] == "OK"
    assert audit["task_id"] == str(task.id)
    assert audit["method"] == f"/{TMS}/AbortTask"
    assert audit["peer"].startswith("ipv4:127.0.0.1:")
    assert audit["time"].endswith("Z")
    # One line per call at DEBUG, with its code.
    calls = [line for line in lines if line["logger"] == "tm.rpc"]
    missing = next(line for line in calls if line["method"] == f"/{TMS}/GetTaskStatus")
    assert missing["code"] == "NOT_FOUND" and missing["duration_ms"] >= 0
    assert missing["task_id"] and missing["message"].startswith("GetTaskStatus NOT_FOUND in ")


def test_no_line_per_call_at_info(json_lines: io.StringIO) -> None:
    logging.getLogger("tm").setLevel(logging.INFO)
    server = ServerThread(log_format="json").start()
    try:
        with TaskManagerClient(server.target) as client:
            client.list_modules()
    finally:
        server.stop()
    assert '"tm.rpc"' not in json_lines.getvalue()


def test_a_traceback_stays_inside_its_json_line() -> None:
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        record = logging.getLogger("tm.test").makeRecord(
            "tm.test", logging.ERROR, __file__, 1, "failed: %s", ("x",), sys.exc_info()
        )
    line = JsonFormatter().format(record)
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["message"] == "failed: x" and "ValueError: boom" in parsed["exception"]
