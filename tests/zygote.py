"""A zygote for the tests' command lines: one interpreter that imports torch, Lightning, Hydra and
aelab's tasks once, then forks a child for each command a test runs.

Why: a fresh ``python src/train.py`` spends about 10 s of CPU on the 2-core machine importing torch
and Lightning (which brings torchvision's models and torch._dynamo through torchmetrics) before it
reads its first override, and the suite runs entry points over a
hundred times. A forked child starts with those modules in memory in a few milliseconds, and is
still a real, separate process: its own pid, exit code and signals (a ``kill -9`` or a SIGTERM it
sends itself ends it, not the test), its own stdout and stderr as files the test reads, its own
environment and working directory, and ``src/train.py`` run as ``__main__`` by ``runpy`` exactly
as ``python`` runs it (so Hydra finds ``../configs`` beside it and multiprocessing's spawn finds the
script). What a child cannot tell apart from a cold interpreter is only what the zygote did at
start: the imports, and the warnings they printed then (to the zygote's own stderr). Tests about
the cold process itself (``--help`` speed, the installed wheel, torchrun, a signal from outside)
use ``conftest.run_cli(..., cold=True)``.

Nothing here computes with torch before forking: an OpenMP thread pool started in the zygote would
not exist in its children (libgomp is not fork-safe), so the children start their own.

Protocol, one command per connection on a Unix socket: the client sends a JSON request (``argv``,
``env``, ``cwd``) with its stdout and stderr file descriptors (SCM_RIGHTS); the zygote answers the
child's pid (so the client can kill it on a timeout), then its wait status once it ends.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

# what every entry point imports before it reads an override; analyze's (scikit-learn, UMAP and
# numba, openTSNE) is the slowest of all
PRELOAD = (
    "torch",
    "lightning.pytorch",
    "hydra",
    "aelab.cli",
    "aelab.tasks.train",
    "aelab.tasks.evaluate",
    "aelab.tasks.analyze",
    "aelab.tasks.encode",
    "aelab.report.sweep",
    "aelab.search",
)
PID = struct.Struct("!q")
STATUS = struct.Struct("!i")


# --- the zygote -------------------------------------------------------------------------------


def serve(address: str) -> dict:
    """Preload, then fork a child per request. Returns only in a child, with its request."""
    import importlib

    for module in PRELOAD:
        importlib.import_module(module)
    sys.stdout.flush()
    sys.stderr.flush()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(address)
    listener.listen(8)
    while True:
        connection, _ = listener.accept()
        message, fds, _, _ = socket.recv_fds(connection, 1 << 22, 2)
        request = json.loads(message)
        pid = os.fork()
        if pid == 0:
            listener.close()
            connection.close()
            os.dup2(fds[0], 1)
            os.dup2(fds[1], 2)
            for fd in fds:
                os.close(fd)
            return request
        for fd in fds:
            os.close(fd)
        connection.sendall(PID.pack(pid))
        _, status = os.waitpid(pid, 0)
        connection.sendall(STATUS.pack(status))
        connection.close()


def become(request: dict) -> None:
    """Turn this forked child into ``python <argv>`` (a script and its arguments, or ``-c <code>``)
    run from ``cwd`` with ``env``."""
    import runpy
    import signal
    import types

    # Ctrl-C as in a command typed at a terminal, even where the tests run as a background job
    # (whose shell starts them with SIGINT ignored, and the zygote would pass that on)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    stdin = os.open(os.devnull, os.O_RDONLY)
    os.dup2(stdin, 0)
    os.close(stdin)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    # what the interpreter puts on sys.path at start: the script's folder ('' for -c), then PYTHONPATH
    extra = [entry for entry in request["env"].get("PYTHONPATH", "").split(os.pathsep) if entry]
    if request["argv"][0] == "-c":
        _, code, *args = request["argv"]
        sys.argv = ["-c", *args]
        sys.path[0:1] = ["", *extra]
        main = types.ModuleType("__main__")
        sys.modules["__main__"] = main
        exec(compile(code, "<string>", "exec"), main.__dict__)
    else:
        script = request["argv"][0]
        sys.argv = list(request["argv"])
        sys.path[0:1] = [os.path.dirname(os.path.abspath(script)), *extra]
        runpy.run_path(script, run_name="__main__")
    sys.exit(0)


# --- the client, in the test process ----------------------------------------------------------


class Zygote:
    """A running zygote, started on first use and stopped at the end of the session."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="zyg"))  # short: a socket path has 108 bytes
        self.address = str(self.folder / "socket")
        self.log = open(self.folder / "zygote.log", "w+b")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            [sys.executable, __file__, self.address], stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log
        )
        deadline = time.monotonic() + 300
        while not os.path.exists(self.address):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.log.seek(0)
                raise RuntimeError(f"the test zygote did not start:\n{self.log.read().decode()[-3000:]}")
            time.sleep(0.05)

    def run(self, argv: list[str], env: dict[str, str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
        """``subprocess.run([python, *argv], env=env, cwd=cwd, capture_output=True, text=True,
        timeout=timeout)`` through a child of the zygote: ``argv`` is a Python script (a file of
        ``src/`` or a console script of the environment) and its arguments, or ``-c <code>``."""
        return self.start(argv, env, cwd).wait(timeout)

    def start(self, argv: list[str], env: dict[str, str], cwd: Path) -> Child:
        """``run`` as ``subprocess.Popen``: the child is running when this returns; its pid is
        there to signal, and ``wait`` gives its result. The zygote starts no other child until then."""
        request = json.dumps({"argv": argv, "env": env, "cwd": str(cwd)}).encode()
        out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        connection.connect(self.address)
        socket.send_fds(connection, [request], [out.fileno(), err.fileno()])
        (pid,) = PID.unpack(receive(connection, PID.size))
        return Child(argv, pid, connection, out, err)

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()
        self.log.close()
        for path in self.folder.iterdir():
            path.unlink()
        self.folder.rmdir()


class Child:
    """A command running in a child of the zygote (``Zygote.start``)."""

    def __init__(self, argv: list[str], pid: int, connection: socket.socket, out: IO[bytes], err: IO[bytes]) -> None:
        self.argv, self.pid, self.connection, self.out, self.err = argv, pid, connection, out, err

    def wait(self, timeout: float) -> subprocess.CompletedProcess:
        with self.connection, self.out, self.err:
            self.connection.settimeout(timeout)
            try:
                (status,) = STATUS.unpack(receive(self.connection, STATUS.size))
            except TimeoutError:
                os.kill(self.pid, 9)
                self.connection.settimeout(None)
                receive(self.connection, STATUS.size)
                raise subprocess.TimeoutExpired(self.argv, timeout) from None
            self.out.seek(0)
            self.err.seek(0)
            stdout, stderr = (f.read().decode(errors="replace") for f in (self.out, self.err))
        return subprocess.CompletedProcess(self.argv, os.waitstatus_to_exitcode(status), stdout, stderr)


def receive(connection: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = connection.recv(size - len(data))
        if not chunk:
            raise RuntimeError("the test zygote ended; its log is zygote.log in its temporary folder")
        data += chunk
    return data


if __name__ == "__main__":
    # the zygote's own folder is not a script's: each child puts its script's folder there
    become(serve(sys.argv[1]))
