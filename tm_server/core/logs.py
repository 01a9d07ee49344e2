"""Logging that a client cannot amplify: repeated lines and tracebacks are rate-limited."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable


class RateLimitedLog:
    """Writes at most one line per key and interval; says how many it held back.

    A client that sends the same bad request a thousand times a second, or
    a bug that fails every call the same way, must not fill the disk: the
    first occurrence of a key is logged in full (with its traceback, if one
    is given), later ones only once per ``interval`` seconds, as one line
    that counts what was suppressed since. Keys are kept up to ``max_keys``
    (the oldest are forgotten), so distinct keys cannot grow it without end.
    """

    def __init__(
        self,
        logger: logging.Logger,
        *,
        interval: float = 10.0,
        max_keys: int = 1024,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger
        self._interval = interval
        self._max_keys = max_keys
        self._monotonic = monotonic
        # key -> (when a line was last written, how many were held back since)
        self._state: dict[Hashable, tuple[float, int]] = {}

    def log(
        self,
        level: int,
        key: Hashable,
        message: str,
        *args: object,
        exc_info: BaseException | None = None,
    ) -> bool:
        """Logs ``message % args`` unless ``key`` was logged within the interval.

        The traceback of ``exc_info`` is written the first time a key is
        seen only. Returns whether a line was written.
        """
        if not self._log.isEnabledFor(level):
            return False
        now = self._monotonic()
        state = self._state.get(key)
        if state is not None:
            last, held = state
            if now - last < self._interval:
                self._state[key] = (last, held + 1)
                return False
            if held:
                message += " (%d more like it in the last %.0fs, not logged)"
                args = (*args, held, now - last)
            self._state[key] = (now, 0)
            self._log.log(level, message, *args)
            return True
        if len(self._state) >= self._max_keys:
            del self._state[next(iter(self._state))]
        self._state[key] = (now, 0)
        self._log.log(level, message, *args, exc_info=exc_info)
        return True
