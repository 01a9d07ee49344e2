"""Runs ``tm-server`` as a real subprocess and finds the port it bound."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

BIN = Path(sys.executable).parent
TM = str(BIN / "tm")


def run_tm(target: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Runs the real ``tm`` CLI against ``target``."""
    return subprocess.run(
        [TM, "--target", target, *args], capture_output=True, text=True, timeout=timeout
    )


class ServerProcess:
    """``python -m tm_server`` on 127.0.0.1:0; stderr is collected for assertions.

    Each server gets a home of its own (``XDG_DATA_HOME``), so its default data
    directory and SQLite store are its own and are removed with it.
    """

    def __init__(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        home: str | None = None,
        preexec_fn: Callable[[], None] | None = None,
    ) -> None:
        # ``home``: a home kept from an earlier server, to restart on its data directory.
        self.home = home or tempfile.mkdtemp(prefix="tm-data-")
        # The HTTP side on a port of its own (its default, 10000, is one per host).
        http = () if "--http-address" in args else ("--http-address", "127.0.0.1:0")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tm_server", "--address", "127.0.0.1:0", *http, *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "XDG_DATA_HOME": self.home, **(env or {})},
            preexec_fn=preexec_fn,
        )
        self.lines: list[str] = []
        self._ready = threading.Event()
        self.port = 0
        #: The HTTP side's port (0 when it is off).
        self.http_port = 0
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready.wait(30):
            self.kill()
            raise RuntimeError("tm-server did not start:\n" + "".join(self.lines))

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            http = re.search(r"http on https?://[\d.]+:(\d+)/", line)
            if http:
                self.http_port = int(http.group(1))
            match = re.search(r"listening on [\d.]+:(\d+)", line)
            if match:
                self.port = int(match.group(1))
                self._ready.set()
        self._ready.set()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def terminate(self, sig: int = signal.SIGTERM, timeout: float = 30, keep: bool = False) -> int:
        """Stops the server with ``sig``; its home goes too, unless ``keep``."""
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        if not keep:
            shutil.rmtree(self.home, ignore_errors=True)
        return code

    def kill(self, keep: bool = False) -> None:
        """SIGKILLs the server (if it runs); its home goes too, unless ``keep``."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if not keep:
            shutil.rmtree(self.home, ignore_errors=True)

    def restart(self, *args: str) -> ServerProcess:
        """A new server on this one's home (its data directory) and port, once it has exited."""
        return ServerProcess(*args, "--address", self.target, home=self.home)

    def output(self) -> str:
        time.sleep(0.05)
        return "".join(self.lines)


def start_producer_script(target: str, *args: str) -> tuple[subprocess.Popen[str], str, str]:
    """A producer process that reports a root and a child, then hangs; and their ids.

    ``args`` go to ``producer_script.py`` (``"cluster"``: the root is a cluster task).
    """
    script = Path(__file__).parent / "producer_script.py"
    proc = subprocess.Popen(
        [sys.executable, str(script), target, *args], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    root_id, child_id = proc.stdout.readline().split()
    return proc, root_id, child_id
