"""Runs ``tm-server`` as a real subprocess and finds the port it bound."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

BIN = Path(sys.executable).parent
TM = str(BIN / "tm")


def run_tm(target: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Runs the real ``tm`` CLI against ``target``."""
    return subprocess.run(
        [TM, "--target", target, *args], capture_output=True, text=True, timeout=timeout
    )


class ServerProcess:
    """``python -m tm_server`` on 127.0.0.1:0; stderr is collected for assertions."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tm_server", "--address", "127.0.0.1:0", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.lines: list[str] = []
        self._ready = threading.Event()
        self.port = 0
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready.wait(30):
            self.kill()
            raise RuntimeError("tm-server did not start:\n" + "".join(self.lines))

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            match = re.search(r"listening on [\d.]+:(\d+)", line)
            if match:
                self.port = int(match.group(1))
                self._ready.set()
        self._ready.set()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def terminate(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def output(self) -> str:
        time.sleep(0.05)
        return "".join(self.lines)
