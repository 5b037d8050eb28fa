"""A persistent worker that starts ``vmpower`` steps without paying for their imports.

A pipeline step spends 2-3 s importing pandas, scikit-learn, XGBoost and the ONNX converters
before it does well under a second of work, and the demo build runs ~170 such steps. Like
Bazel's persistent workers, ``vmpower worker run -- snakemake ...`` starts one server that
imports those libraries once; every ``python -m vmpower ...`` the build starts then asks the
server to fork a child that runs the step:

* Each step runs in its own forked process, in the job's working directory, environment,
  stdin/stdout/stderr (passed over the Unix socket) and with its exit code, so a step cannot
  see another step's state. vmpower's own modules are imported by the child from disk, so an
  edited stage runs its new code; only third-party libraries are preloaded.
* The server is single-threaded and never runs library code itself, so forking is safe (no
  OpenMP or BLAS thread pools exist yet) and the children start from the same state a fresh
  interpreter would reach after the same imports: outputs are byte-identical with and without
  the worker (tests/test_workflow.py builds both).
* When the client stops (Snakemake cancels a job), the server kills the step's process group.
  A step also dies with the server (PR_SET_PDEATHSIG), with its client and with the build
  (vmpower.lifeline): no step outlives its build, and one whose build ended publishes nothing.
* Without a reachable server (``VMPOWER_WORKER`` unset, another interpreter, venv or vmpower
  source tree, inside a SLURM allocation, where a step must use the allocation's resources),
  ``python -m vmpower`` runs the step itself as always.
* Snakemake's ``benchmark:`` files keep the step's wall time (``s``); their CPU and memory
  columns measure only the client, because the step is not its child.

This module imports only the standard library (and vmpower.lifeline, which does too) at module
level: it is the client too.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vmpower import lifeline

ENV = "VMPOWER_WORKER"
# Imported once by the server (the cost every step would pay); vmpower's modules never are.
PRELOAD = (
    "numpy", "pandas", "pyarrow.parquet", "joblib", "yaml",
    "sklearn.pipeline", "sklearn.preprocessing", "sklearn.linear_model", "sklearn.ensemble",
    "sklearn.neighbors", "xgboost", "skl2onnx", "skl2onnx.sklapi", "onnxmltools", "matplotlib.pyplot",
)
# Not preloaded: onnxruntime starts a thread when imported, and a thread's locks do not survive
# a fork; the export steps import it themselves (0.3 s).
MAX_REQUEST = 1 << 20
KILL_GRACE_SECONDS = 5.0


def _log(message: str) -> None:
    print(f"vmpower worker: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- client (python -m vmpower)


def interpreter() -> list[str]:
    """Which Python, environment (venv) and vmpower source a step asks for: the worker serves
    only its own (the children import vmpower from the server's sys.path)."""
    import vmpower

    return [os.path.realpath(sys.executable), sys.prefix, sys.version,
            *(os.path.realpath(p) for p in vmpower.__path__)]


def forward(argv: list[str]) -> int | None:
    """Run ``vmpower argv`` in the worker named by $VMPOWER_WORKER and return its exit code;
    None when there is no usable worker (the caller then runs the step itself)."""
    path = os.environ.get(ENV)
    if not path or os.environ.get("SLURM_JOB_ID"):
        return None
    lifeline.arm()  # the client dies with the build; the server then stops the step
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
        request = {"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ), "interpreter": interpreter()}
        # The request ends at its newline; the connection stays open until the step ends (the
        # server takes its closing as "stop the step").
        socket.send_fds(sock, [json.dumps(request).encode() + b"\n"], [0, 1, 2])
    except OSError:
        sock.close()
        return None

    def stop(signum, _frame):
        sock.close()  # the server sees the connection end and kills the step
        os._exit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, stop)
    reply = b""
    while chunk := sock.recv(4096):
        reply += chunk
    sock.close()
    # The build may have ended while the step ran, and the step's answer (killed by the same
    # watch) arrived before this process's own watch fired: die with the build all the same.
    lifeline.check()
    if not reply:
        print(f"vmpower: error: {path}: the worker ended before the step did", file=sys.stderr)
        return 1
    answer = json.loads(reply)
    if answer.get("refused"):
        return None
    return int(answer["exit"])


# ---------------------------------------------------------------- server


def preload(modules=PRELOAD) -> list[str]:
    """Import what the steps import; a module this environment lacks is skipped."""
    import importlib

    loaded = []
    for name in modules:
        try:
            importlib.import_module(name)
            loaded.append(name)
        except ImportError:
            pass
    if "matplotlib.pyplot" in loaded:
        import matplotlib

        matplotlib.use("Agg")
    return loaded


def _read_request(conn: socket.socket) -> tuple[dict, list[int]]:
    conn.settimeout(10)
    data, fds, _flags, _addr = socket.recv_fds(conn, MAX_REQUEST, 3)
    while not data.endswith(b"\n"):
        more = conn.recv(MAX_REQUEST)
        if not more:
            break
        data += more
    conn.settimeout(None)
    return json.loads(data), fds


def _run_child(request: dict, fds: list[int], close: list, client: int, server: int) -> None:
    """In the forked child: become the step, then exit with its code (never returns)."""
    code = 1
    try:
        os.setpgid(0, 0)
        lifeline.die_with_parent(signal.SIGKILL, server)
        for s in close:
            s.close()
        # vmpower's modules come from disk after the fork, so an edited stage (or cli.py) runs
        # its new code; the server loaded only cli, errors and this module.
        for name in [m for m in sys.modules if m == "vmpower" or m.startswith("vmpower.")]:
            del sys.modules[name]
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        for target, fd in zip((0, 1, 2), fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        os.environ.pop(ENV, None)
        sys.argv = ["vmpower", *request["argv"]]
        from vmpower import lifeline as fresh  # the module io.py and cli.py see

        fresh.arm(client, server)  # and the build named in the client's environment
        from vmpower.cli import main  # from disk, after the fork: an edited stage runs its new code

        code = int(main(request["argv"]) or 0)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - a step's crash is reported like an interpreter's
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


class _Server:
    """The server's state: the listening socket, the running steps and their clients."""

    def __init__(self, path: str):
        self.path = path
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        Path(path).unlink(missing_ok=True)
        self.listener.bind(path)
        os.chmod(path, 0o600)
        self.listener.listen(64)
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.listener, selectors.EVENT_READ, None)
        self.running: dict[int, socket.socket] = {}  # pid -> the client's connection
        self.killed: dict[int, float] = {}  # pid -> when SIGTERM was sent
        self.served = self.refused = 0

    def accept(self) -> None:
        """Read a request and fork its step (or refuse it: another interpreter)."""
        conn, _ = self.listener.accept()
        try:
            request, fds = _read_request(conn)
        except (OSError, ValueError) as exc:
            _log(f"bad request ({exc})")
            conn.close()
            return
        if request.get("interpreter") != interpreter() or len(fds) != 3:
            self.refused += 1
            conn.sendall(json.dumps({"refused": "another interpreter, venv or vmpower source"}).encode())
            conn.close()
            for fd in fds:
                os.close(fd)
            return
        client = _peer_pid(conn)
        sys.stdout.flush()
        sys.stderr.flush()
        server = os.getpid()
        pid = os.fork()
        if pid == 0:
            _run_child(request, fds, [self.sel, self.listener, *self.running.values(), conn], client, server)
        for fd in fds:
            os.close(fd)
        self.running[pid] = conn
        self.served += 1
        self.sel.register(conn, selectors.EVENT_READ, pid)

    def poll(self, timeout: float) -> None:
        """Accept steps, stop those whose client went away, escalate to SIGKILL, reap."""
        for key, _ in self.sel.select(timeout=timeout):
            if key.data is None:
                self.accept()
            elif key.data in self.running and not key.fileobj.recv(1):
                pid = key.data  # the client went away: stop its step
                self.sel.unregister(key.fileobj)
                _kill(pid, signal.SIGTERM)
                self.killed[pid] = time.monotonic()
        now = time.monotonic()
        for pid, since in list(self.killed.items()):
            if now - since > KILL_GRACE_SECONDS:
                _kill(pid, signal.SIGKILL)
                del self.killed[pid]
        _reap(self.running, self.killed, self.sel)

    def close(self) -> None:
        """Stop the running steps (SIGTERM, then SIGKILL after the grace), remove the socket."""
        for pid in list(self.running):
            _kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + KILL_GRACE_SECONDS
        while self.running and time.monotonic() < deadline:
            _reap(self.running, self.killed, self.sel)
            time.sleep(0.02)
        for pid in list(self.running):
            _kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        self.listener.close()
        Path(self.path).unlink(missing_ok=True)
        _log(f"served {self.served} steps" + (f", refused {self.refused} (another interpreter, venv or vmpower "
                                              "source)" if self.refused else ""))


def serve(path: str, idle_timeout: float = 0.0) -> int:
    """Serve steps on the Unix socket ``path`` until SIGTERM/SIGINT (or ``idle_timeout`` s
    without a step, when > 0)."""
    loaded = preload()
    server = _Server(path)
    stopping = False

    def stop(_signum, _frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    _log(f"serving on {path} ({len(loaded)} modules preloaded)")
    last_active = time.monotonic()
    try:
        while not stopping:
            server.poll(0.02)
            now = time.monotonic()
            if server.running:
                last_active = now
            elif idle_timeout > 0 and now - last_active > idle_timeout:
                _log(f"idle for {idle_timeout:g} s, stopping")
                break
    finally:
        server.close()
    return 0


def _peer_pid(conn: socket.socket) -> int:
    """The pid of the process that connected (the step's client)."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[0]


def _kill(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _reap(running: dict, killed: dict, sel) -> None:
    while running:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = running.pop(pid, None)
        killed.pop(pid, None)
        if conn is None:
            continue
        try:
            sel.unregister(conn)
        except (KeyError, ValueError):
            pass
        try:
            conn.sendall(json.dumps({"exit": os.waitstatus_to_exitcode(status)}).encode())
        except OSError:
            pass
        conn.close()


# ---------------------------------------------------------------- vmpower worker run -- CMD


def run_with_worker(command: list[str], start_timeout: float = 60.0) -> int:
    """Run ``command`` (e.g. snakemake) with a worker serving its vmpower steps."""
    tmp = tempfile.mkdtemp(prefix="vmpower-worker-")
    path = os.path.join(tmp, "socket")
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    env.pop(ENV, None)
    me = os.getpid()
    # The server dies with this process, however it ends (and its steps with it); the command
    # is asked to stop (snakemake then stops its jobs and releases its locks).
    server = subprocess.Popen([sys.executable, "-m", "vmpower", "worker", "serve", "--socket", path], env=env,
                              preexec_fn=lambda: lifeline.die_with_parent(signal.SIGKILL, me))
    try:
        deadline = time.monotonic() + start_timeout
        while not os.path.exists(path) and server.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        child_env = dict(os.environ)
        if os.path.exists(path):
            child_env[ENV] = path
        else:
            _log("did not start; the steps start their own interpreters")
        try:
            code = subprocess.call(command, env=child_env,
                                   preexec_fn=lambda: lifeline.die_with_parent(signal.SIGTERM, me))
            return 128 - code if code < 0 else code  # killed by a signal: the shell's convention
        except FileNotFoundError:
            _log(f"{command[0]}: command not found")
            return 127
    finally:
        if server.poll() is None:
            server.terminate()
            try:
                server.wait(timeout=KILL_GRACE_SECONDS * 2)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        Path(path).unlink(missing_ok=True)
        os.rmdir(tmp)


def cmd_serve(args) -> int:
    if os.environ.get("PYTHONHASHSEED") != "0":
        # Every step inherits the server's hash seed: make it the one the build runs with.
        os.execve(sys.executable, [sys.executable, "-m", "vmpower", *sys.argv[1:]],
                  {**os.environ, "PYTHONHASHSEED": "0"})
    return serve(args.socket, idle_timeout=args.idle_timeout)


def cmd_run(args) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        print("vmpower worker run: error: give the command to run, e.g. `vmpower worker run -- snakemake --cores 2`",
              file=sys.stderr)
        return 2
    return run_with_worker(command)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("worker", help="run a command (snakemake) with a preloaded worker serving its vmpower steps")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    r = actions.add_parser("run", help="start a worker, run COMMAND with it, stop it")
    r.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    r.set_defaults(func=cmd_run)
    s = actions.add_parser("serve", help="only the server (what `run` starts)")
    s.add_argument("--socket", required=True, help="the Unix socket to listen on")
    s.add_argument("--idle-timeout", type=float, default=0.0, help="stop after this many idle seconds (0: never)")
    s.set_defaults(func=cmd_serve)
