"""A TCP fault proxy: between the service and PostgreSQL, it passes the bytes, refuses
connections, resets them, or delays every packet.

Modes (:meth:`FaultProxy.set`), applied to new and open connections alike:

- ``pass``: bytes flow both ways untouched;
- ``refuse``: the port stops listening (a connect gets ECONNREFUSED) and every open
  connection is reset: the database is down;
- ``reset``: the port still accepts, but every connection is reset at once (RST);
- ``delay``: each packet (each ``recv``) waits ``delay`` seconds before it is forwarded, in
  both directions: a slow database or network.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time


class FaultProxy:
    def __init__(self, upstream: tuple[str, int]):
        self.upstream = upstream
        self.mode = "pass"
        self.delay = 0.0
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._listen()

    def _listen(self) -> None:
        if self._listener.fileno() == -1:
            self._listener = socket.socket()
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._listener.bind(("127.0.0.1", self.port))
        self._listener.listen(256)
        threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()

    def set(self, mode: str, delay: float = 0.0) -> None:
        if mode not in ("pass", "refuse", "reset", "delay"):
            raise ValueError(mode)
        with self._lock:
            was, self.mode, self.delay = self.mode, mode, delay
        if mode in ("refuse", "reset"):
            self._reset_all()
        if mode == "refuse" and was != "refuse":
            _stop_listening(self._listener)
        if mode != "refuse" and was == "refuse":
            self._listen()

    def close(self) -> None:
        _stop_listening(self._listener)
        self._reset_all()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed: refusing, or the end
            if self.mode in ("reset", "refuse"):
                _reset(client)
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                _reset(client)
                continue
            server.settimeout(None)
            with self._lock:
                self._open |= {client, server}
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                if self.mode == "delay":
                    time.sleep(self.delay)
                if self.mode in ("reset", "refuse"):
                    break
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            _reset(sock)
            with self._lock:
                self._open.discard(sock)

    def _reset_all(self) -> None:
        with self._lock:
            sockets, self._open = list(self._open), set()
        for sock in sockets:
            _reset(sock)


def _reset(sock: socket.socket) -> None:
    """Cut the connection as a crashed peer would (SO_LINGER 0: an RST on close). The
    ``shutdown`` first wakes a pump thread blocked in ``recv`` on it: a bare ``close`` from
    another thread would leave the connection open, silent, for as long as that lasts."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


def _stop_listening(listener: socket.socket) -> None:
    """Close a listening socket for good: ``shutdown`` wakes the thread blocked in
    ``accept`` (a bare ``close`` would leave the port listening until it returns)."""
    with contextlib.suppress(OSError):
        listener.shutdown(socket.SHUT_RDWR)
    listener.close()
