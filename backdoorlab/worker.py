"""A warm start for the stages: run a command with torch already imported, so no stage pays for it.

    python -m backdoorlab.worker dvc repro      # what `make demo` does; any command works

Importing torch and its company takes 2-4 s on a small CPU, longer than many demo
stages compute. This starts one server process that imports the heavy third-party
libraries once (never the project's own code, so edits are always seen), then runs
the command with BACKDOORLAB_WORKER naming the server's socket. A stage started as
`python -m stages.<name> ...` finds it there (see stages/__init__.py), and the server
forks a copy of itself that runs the stage with the caller's arguments, working
folder, environment and standard streams, and reports its exit code back. The fork
happens before torch has started any thread, so it is safe. Without the variable,
or when the server cannot be reached, stages start as usual: the results are the
same either way, only the start-up differs.
"""
from __future__ import annotations

import array
import json
import os
import runpy
import signal
import socket
import subprocess
import sys
import tempfile
import threading

ENV = "BACKDOORLAB_WORKER"
PRELOAD = ("numpy", "torch", "torch.nn.functional", "torchvision", "PIL.Image", "yaml", "tqdm.auto", "pandas",
           "matplotlib.pyplot", "dvclive")


def _recv_request(conn: socket.socket) -> tuple[dict, list[int]]:
    fds = array.array("i")
    data, ancillary, _, _ = conn.recvmsg(1 << 20, socket.CMSG_SPACE(3 * fds.itemsize))
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
    return json.loads(data.decode()), list(fds)


def _run_child(request: dict, fds: list[int]) -> None:
    """In the forked child: become the stage process and run it; never returns."""
    code = 1
    try:
        for target, fd in enumerate(fds[:3]):
            os.dup2(fd, target)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        if os.environ.get("OMP_NUM_THREADS", "").isdigit():  # torch read the server's at import: honour the caller's
            import torch

            torch.set_num_threads(max(1, int(os.environ["OMP_NUM_THREADS"])))
        sys.argv = [request["module"], *request["args"]]
        sys.path.insert(0, request["cwd"])
        for name in [m for m in sys.modules if m.split(".")[0] in ("backdoorlab", "stages")]:
            del sys.modules[name]  # the project's code comes fresh from the caller's folder
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            if not isinstance(exc.code, int) and exc.code is not None:
                print(exc.code, file=sys.stderr)
        except BaseException:
            import traceback

            traceback.print_exc()
            code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _serve_one(conn: socket.socket, server: socket.socket) -> None:
    with conn:
        request, fds = _recv_request(conn)
        pid = os.fork()
        if pid == 0:
            conn.close()
            server.close()
            _run_child(request, fds)
        for fd in fds:
            os.close(fd)
        # If the caller goes away (Ctrl-C, a killed `dvc repro`), stop the stage too.
        watcher = threading.Thread(target=_kill_when_closed, args=(conn, pid), daemon=True)
        watcher.start()
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        try:
            conn.sendall(json.dumps({"exit": code}).encode())
            conn.shutdown(socket.SHUT_RDWR)  # the caller sees the end, and the watcher's recv returns
        except OSError:
            pass
        watcher.join()


def _kill_when_closed(conn: socket.socket, pid: int) -> None:
    try:
        if conn.recv(1) == b"":
            os.kill(pid, signal.SIGTERM)  # a no-op error once the stage has finished
    except OSError:
        pass


def serve(path: str, ready: int | None = None) -> None:
    """Import the heavy libraries, then run stages for whoever connects to `path`, until terminated."""
    for name in PRELOAD:
        try:
            __import__(name)
        except ImportError:
            pass
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(8)
    if ready is not None:
        os.write(ready, b"1")
        os.close(ready)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    while True:
        conn, _ = server.accept()
        threading.Thread(target=_serve_one, args=(conn, server), daemon=True).start()


def delegate(module: str, args: list[str]) -> int | None:
    """Called by a stage before its heavy imports: run it in the server named by $BACKDOORLAB_WORKER.

    Returns the stage's exit code, or None when there is no server to run it (then run as usual)."""
    path = os.environ.get(ENV)
    if not path:
        return None
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        client.connect(path)
    except OSError:
        return None
    env = {k: v for k, v in os.environ.items() if k != ENV}
    request = {"module": module, "args": args, "cwd": os.getcwd(), "env": env}
    with client:
        client.sendmsg([json.dumps(request).encode()],
                       [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [0, 1, 2]))])
        reply = b""
        while chunk := client.recv(4096):
            reply += chunk
    return int(json.loads(reply.decode())["exit"]) if reply else 1


def dvc_arguments(command: list[str]) -> list[str] | None:
    """The arguments of a DVC command line (`dvc ...` or `<python> -m dvc ...`); None for any other command.

    The worker runs DVC commands as `python -m backdoorlab.dvcrun <arguments>`: DVC with a cheaper
    dvc.lock rewrite after each stage (see that module)."""
    if command and os.path.basename(command[0]) == "dvc":
        return command[1:]
    if len(command) >= 3 and command[1:3] == ["-m", "dvc"] and os.path.basename(command[0]).startswith("python"):
        return command[3:]
    return None


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        sys.exit(0 if len(sys.argv) >= 2 else 2)
    with tempfile.TemporaryDirectory(prefix="backdoorlab-worker-") as folder:
        path = os.path.join(folder, "socket")
        ready_r, ready_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(ready_r)
            os.setsid()  # its own process group: Ctrl-C reaches the command, which stops its stages
            serve(path, ready_w)
        os.close(ready_w)
        os.read(ready_r, 1)
        os.close(ready_r)
        dvc_args = dvc_arguments(sys.argv[1:])
        command = sys.argv[1:] if dvc_args is None else [sys.executable, "-m", "backdoorlab.dvcrun", *dvc_args]
        try:
            code = subprocess.call(command, env={**os.environ, ENV: path})
        finally:
            os.kill(pid, signal.SIGTERM)
            os.waitpid(pid, 0)
    sys.exit(code)


if __name__ == "__main__":
    main()
