"""A TCP forwarder on loopback whose link can be cut and restored: a real network outage.

Clients connect to ``target``; bytes go to and from the server behind it.
``cut()`` closes every connection and refuses new ones (the listening socket
is closed), as a server that went away; ``restore()`` listens again on the
same port. ``lose_next_reply()`` drops the next bytes the server sends and
breaks that connection: a request carried out whose answer never arrived.
Nothing about tm is faked: the server behind it keeps its state.
"""

from __future__ import annotations

import contextlib
import socket
import threading


class NetCut:
    """Forwards 127.0.0.1:PORT to ``upstream`` (HOST:PORT) until cut."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.rsplit(":", 1)
        self._upstream = (host, int(port))
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self._lose_reply = threading.Event()
        self.port = 0
        self.restore()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def restore(self) -> None:
        """Accepts connections again (on the same port)."""
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        """Closes every connection and stops listening: the server looks gone."""
        with self._lock:
            listener, self._listener = self._listener, None
            doomed, self._sockets = self._sockets, []
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        for sock in doomed:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def lose_next_reply(self) -> None:
        """The next bytes from the server are dropped, and their connection broken."""
        self._lose_reply.set()

    def close(self) -> None:
        self.cut()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                server = socket.create_connection(self._upstream)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    server.close()
                    return
                self._sockets += [client, server]
            for a, b, replies in ((client, server, False), (server, client, True)):
                threading.Thread(target=self._pipe, args=(a, b, replies), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, replies: bool) -> None:
        try:
            while data := source.recv(65536):
                if replies and self._lose_reply.is_set():
                    self._lose_reply.clear()
                    for sock in (source, sink):
                        with contextlib.suppress(OSError):
                            sock.shutdown(socket.SHUT_RDWR)
                    return
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)
