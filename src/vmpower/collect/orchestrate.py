"""Orchestrator (``vmpower collect run``): one run directory from a VM over SSH + host Kepler.

1. SSH to the VM (paramiko; host key verified against known_hosts, RejectPolicy unless
   ``--insecure-accept-host-key``, which accepts an unknown key for this session only and never
   writes it to any known_hosts file).
2. Pick a common start instant a few seconds ahead; launch ``vmpower collect vm --start-at T``
   in the VM in its own session (setsid, so its process group can be killed as a whole) and the
   host collector here with the same ``--start-at``.
3. Wait for the guest to finish, copy its file back over SFTP, write ``machine_spec.json``.
On failure or Ctrl-C: kill the remote process group (the guest collector stops its stress-ng
on SIGTERM), stop the host collector and still copy whatever the guest wrote (JSON Lines).

Every remote argument goes through ``shlex.quote`` and user-supplied option values are passed
as ``--opt=value``: VM names and paths can neither inject commands nor pass for options.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from vmpower.collect.common import Progress, file_stamp
from vmpower.collect.machine import machine_spec
from vmpower.errors import InputError

log = logging.getLogger("vmpower.collect.run")

_NAME_OK = re.compile(r"[^A-Za-z0-9_.-]+")


def slug(text: str) -> str:
    """A node_type / run_id / file-name-safe version of ``text`` (letters, digits, _ . -)."""
    return _NAME_OK.sub("-", text).strip("-.") or "unknown"


def _accept_unverified_policy():
    """paramiko's AutoAddPolicy also saves the key into the loaded known_hosts file; this one
    accepts an unknown key for this connection only (``--insecure-accept-host-key``)."""
    import paramiko

    class AcceptForThisSession(paramiko.MissingHostKeyPolicy):
        def missing_host_key(self, client, hostname, key):
            log.warning("accepting UNVERIFIED host key of %s (%s %s) for this session only; not saved",
                        hostname, key.get_name(), key.get_fingerprint().hex())

    return AcceptForThisSession()


@dataclass
class RemoteProcess:
    pgid: int
    output: str  # absolute path in the VM


class Orchestrator:
    def __init__(self, *, vm_name: str, vm_host: str, vm_user: str = "root", vm_port: int = 22,
                 vm_key_file: str | None = None, known_hosts: str | None = None,
                 insecure_accept_host_key: bool = False, vm_project_path: str = "/root/vmpower",
                 vm_python: str | None = None, duration: float = 800.0, workloads: str = "none",
                 cpu_intensive_duration: float | None = None, output_prefix: str = "training",
                 interval: float = 1.0, host_interval: float = 0.1, kepler_url: str = "",
                 vm_kepler_url: str = "none", data_dir: str = "data/raw", node_type: str | None = None,
                 run_id: str | None = None, start_delay: float = 3.0, connect_timeout: float = 15.0,
                 verbose: bool = False):
        from vmpower.collect.stress import parse_sequence

        parse_sequence(workloads, duration, cpu_intensive_duration)  # fail early on a bad spec
        self.vm_name = vm_name
        self.vm_host = vm_host
        self.vm_user = vm_user
        self.vm_port = vm_port
        self.vm_key_file = vm_key_file
        self.known_hosts = known_hosts
        self.insecure = insecure_accept_host_key
        self.project = vm_project_path
        self.vm_python = vm_python
        self.duration = duration
        self.workloads = workloads
        self.cpu_intensive_duration = cpu_intensive_duration
        self.prefix = slug(output_prefix)
        self.interval = interval
        self.host_interval = host_interval
        self.kepler_url = kepler_url
        self.vm_kepler_url = vm_kepler_url
        self.stamp = file_stamp()
        self.node_type = slug(node_type) if node_type else slug(machine_spec()["processor"])
        self.run_id = slug(run_id) if run_id else f"{self.prefix}_{self.stamp}"
        self.run_dir = Path(data_dir) / self.node_type / self.run_id
        self.start_delay = start_delay
        self.connect_timeout = connect_timeout
        self.verbose = verbose
        self._stop = threading.Event()
        self.client = None
        self.remote: RemoteProcess | None = None
        self.host_collector = None
        self.vm_file = self.run_dir / f"vm_features_{self.prefix}_{self.stamp}.json"
        self.host_file = self.run_dir / f"bm_power_{self.prefix}_{self.stamp}.csv"

    def stop(self) -> None:
        self._stop.set()
        if self.host_collector is not None:
            self.host_collector.stop()

    # -- SSH ----------------------------------------------------------------------------------------
    def connect(self):
        import paramiko

        client = paramiko.SSHClient()
        client.load_system_host_keys()
        if self.known_hosts:
            if not Path(self.known_hosts).is_file():
                raise InputError(self.known_hosts, "known_hosts file not found")
            client.load_host_keys(self.known_hosts)
        if self.insecure:
            log.warning("accepting an unknown host key for %s (--insecure-accept-host-key)", self.vm_host)
            client.set_missing_host_key_policy(_accept_unverified_policy())
        else:
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
        target = f"{self.vm_user}@{self.vm_host}:{self.vm_port}"
        try:
            client.connect(self.vm_host, port=self.vm_port, username=self.vm_user,
                           key_filename=self.vm_key_file, timeout=self.connect_timeout,
                           banner_timeout=self.connect_timeout, auth_timeout=self.connect_timeout,
                           look_for_keys=self.vm_key_file is None, allow_agent=self.vm_key_file is None)
        except paramiko.SSHException as exc:
            client.close()
            if "not found in known_hosts" in str(exc) or isinstance(exc, paramiko.BadHostKeyException):
                raise InputError(target, f"host key not verified ({exc}); add it to known_hosts "
                                         "(ssh-keyscan) or pass --known-hosts") from None
            raise InputError(target, f"SSH failed: {exc}") from None
        except OSError as exc:
            client.close()
            raise InputError(target, f"cannot connect: {exc}") from None
        self.client = client
        log.info("connected to %s", target)
        return client

    def ensure_connected(self) -> None:
        """Reconnect once if the SSH session dropped, so cleanup and copy-back can still happen."""
        transport = self.client.get_transport() if self.client is not None else None
        if transport is not None and transport.is_active():
            return
        try:
            self.connect()
        except Exception as exc:
            log.error("could not reconnect to the VM for cleanup: %s", exc)

    def run_remote(self, argv_or_script: str, timeout: float = 60.0) -> tuple[int, str, str]:
        """Run a shell script (already quoted) in the VM; returns (status, stdout, stderr)."""
        _stdin, stdout, stderr = self.client.exec_command(argv_or_script, timeout=timeout)
        out = stdout.read().decode("utf-8", "replace")
        err = stderr.read().decode("utf-8", "replace")
        return stdout.channel.recv_exit_status(), out, err

    def guest_command(self, start_at: float, remote_output: str) -> str:
        q = shlex.quote
        py = q(self.vm_python) if self.vm_python else '"$PY"'
        # --opt=value: a value starting with "-" (a VM named "-rf") stays a value
        args = ["-m", "vmpower", "collect", "vm", f"--duration={self.duration:g}",
                f"--interval={self.interval:g}", f"--output={remote_output}",
                f"--stress-workload={self.workloads}", f"--kepler-url={self.vm_kepler_url}",
                f"--vm-name={self.vm_name}", f"--start-at={start_at:.3f}"]
        if self.cpu_intensive_duration:
            args.append(f"--cpu-intensive-duration={self.cpu_intensive_duration:g}")
        if self.verbose:
            args.append("--verbose")
        pick_py = ('if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi; '
                   if not self.vm_python else "")
        # Separate statements, so "&" puts only the setsid command in the background (after an
        # "a && b && c &" list, $! is a subshell's pid). A non-interactive shell has no job
        # control: that child is not a group leader, setsid() happens in place, and $! is the
        # collector's pid, session and process group id, which cleanup kills as a whole.
        return (f"cd {q(self.project)} || exit 1; "
                f"mkdir -p data logs || exit 1; {pick_py}"
                f"PYTHONPATH={q(self.project + '/src')}${{PYTHONPATH:+:$PYTHONPATH}} "
                f"setsid {py} {' '.join(q(a) for a in args)} "
                f"> {q('logs/vm_collector_' + self.prefix + '_' + self.stamp + '.out')} 2>&1 < /dev/null & "
                f"echo $!")

    def start_guest(self, start_at: float) -> RemoteProcess:
        remote_output = f"{self.project.rstrip('/')}/data/vm_features_{self.prefix}_{self.stamp}.json"
        status, out, err = self.run_remote(self.guest_command(start_at, remote_output), timeout=30)
        pid = out.strip().splitlines()[-1] if out.strip() else ""
        if status != 0 or not pid.isdigit():
            detail = " ".join((err or out).split())[:300]  # one line (the shell says why cd failed)
            raise InputError(f"{self.vm_host}:{self.project}",
                             f"could not start the guest collector (exit {status}): {detail}")
        self.remote = RemoteProcess(pgid=int(pid), output=remote_output)
        # a collector that cannot run (no such --vm-python, missing modules) exits at once
        time.sleep(1.0)
        if not self.remote_alive():
            tail = " | ".join(line.strip() for line in self.remote_log_tail(5).splitlines() if line.strip())
            self.remote = None
            raise InputError(f"{self.vm_host}:{self.project}",
                             f"could not start the guest collector (it exited at once): {tail[-300:]}")
        log.info("guest collector started in the VM (pgid %s), output %s", pid, remote_output)
        return self.remote

    def remote_alive(self, group: bool = False) -> bool:
        """The guest collector (with ``group``: any process of its process group) still runs.

        Zombies do not count: an orphan stays one until the VM's init reaps it, which can take
        seconds, and ``kill -0`` would call it alive. State and group come from /proc/<pid>/stat
        (``pid (comm) state ppid pgrp ...``), read with shell builtins only."""
        pg = int(self.remote.pgid)
        fields = 's=${s##*) }; set -- $s'  # what follows the last ")": state, ppid, pgrp, ...
        if group:
            script = (f'for f in /proc/[0-9]*/stat; do read -r s 2>/dev/null < "$f" || continue; {fields}; '
                      f'if [ "$3" = {pg} ] && [ "$1" != Z ]; then exit 0; fi; done; exit 1')
        else:
            script = f'read -r s 2>/dev/null < /proc/{pg}/stat || exit 1; {fields}; [ "$1" != Z ]'
        status, _, _ = self.run_remote(script, timeout=15)
        return status == 0

    def kill_remote(self, grace: float = 8.0) -> None:
        """SIGTERM the guest collector's process group (it finalizes its file and stops its
        stress-ng), SIGKILL what is left of the group if it does not exit in time."""
        if self.remote is None or self.client is None:
            return
        pg = int(self.remote.pgid)
        try:
            self.run_remote(f"kill -TERM -- -{pg} 2>/dev/null; true", timeout=15)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline:
                if not self.remote_alive(group=True):
                    log.info("guest collector stopped")
                    return
                time.sleep(0.3)
            log.warning("guest collector did not stop on SIGTERM; killing its process group")
            self.run_remote(f"kill -KILL -- -{pg} 2>/dev/null; pkill -KILL -s {pg} 2>/dev/null; true",
                            timeout=15)
        except Exception as exc:  # the connection itself may be what failed
            log.error("could not stop the guest collector (pgid %d): %s", pg, exc)

    def fetch_guest_file(self) -> Path | None:
        if self.remote is None or self.client is None:
            return None
        try:
            sftp = self.client.open_sftp()
            try:
                size = sftp.stat(self.remote.output).st_size
                tmp = self.vm_file.with_name("." + self.vm_file.name + ".part")
                sftp.get(self.remote.output, str(tmp))
                os.replace(tmp, self.vm_file)
            finally:
                sftp.close()
        except (OSError, IOError) as exc:
            log.error("could not copy %s from the VM: %s", self.remote.output, exc)
            return None
        log.info("copied %s (%d bytes) -> %s", self.remote.output, size, self.vm_file)
        return self.vm_file

    def remote_log_tail(self, lines: int = 20) -> str:
        q = shlex.quote
        path = f"{self.project.rstrip('/')}/logs/vm_collector_{self.prefix}_{self.stamp}.out"
        try:
            _, out, _ = self.run_remote(f"tail -n {int(lines)} {q(path)} 2>&1", timeout=15)
        except Exception as exc:
            return f"(unavailable: {exc})"
        return out

    # -- the run ------------------------------------------------------------------------------------
    def _start_host(self, start_at: float) -> None:
        """The host collector in a thread, a little longer than the guest so every guest window
        has power; the VM name is matched exactly (a VM named "web[1]" is not a glob pattern)."""
        from vmpower.collect.host import HostCollector

        self.host_collector = HostCollector(self.kepler_url, self.host_file, vm_names=[self.vm_name],
                                            interval=self.host_interval,
                                            duration=self.duration + 2 * self.interval + 1.0,
                                            start_at=start_at, progress=False)
        if self._stop.is_set():
            self.host_collector.stop()

        def host_main():
            try:
                self.host_collector.run()
            except BaseException as exc:  # reported after the guest side is cleaned up
                self._host_error.append(exc)
                log.exception("host collector failed")

        self._host_thread = threading.Thread(target=host_main, name="host-collector", daemon=True)
        self._host_thread.start()

    def _wait(self, start_at: float) -> bool:
        """Until the guest collector ends (True) or the run stops, fails or overruns (False)."""
        import paramiko

        end = start_at + self.duration + max(30.0, 0.1 * self.duration)
        self._progress = Progress(f"run {self.run_id}", self.duration)
        while not self._stop.is_set():
            self._progress.update(max(0.0, min(self.duration, time.time() - start_at)),
                                  f"host rows {self.host_collector.rows}")
            if self._stop.wait(2.0):
                break
            try:
                if not self.remote_alive():
                    break
            except (OSError, EOFError, paramiko.SSHException) as exc:
                log.error("SSH connection to the VM failed during the run: %s", exc)
                return False
            if time.time() > end:
                log.error("guest collector still running %.0f s after the end; stopping it",
                          time.time() - start_at - self.duration)
                return False
        return not self._stop.is_set()

    def _collect(self) -> bool:
        from vmpower.io import write_json

        start_at = time.time() + self.start_delay
        self.start_guest(start_at)
        # only now: a refused host or a guest that cannot start leaves no half-made run directory
        self.run_dir.mkdir(parents=True, exist_ok=True)
        log.info("run directory %s", self.run_dir)
        write_json(machine_spec(), self.run_dir / "machine_spec.json")
        self._start_host(start_at)
        return self._wait(start_at)

    def _finish(self, ok: bool) -> tuple[Path | None, bool]:
        """Stop both sides, copy the guest's file back: (that file or None, still ok)."""
        if self._progress is not None:
            self._progress.close()
        if not ok:
            log.warning("stopping the remote collector and keeping the partial data")
        self.ensure_connected()
        self.kill_remote()
        if self.host_collector is not None:
            if not ok:
                self.host_collector.stop()
            if self._host_thread is not None:
                self._host_thread.join(self.duration + 30)
        fetched = self.fetch_guest_file()
        if fetched is not None and fetched.stat().st_size < 8:  # "[\n]\n" or empty
            ok = False
            log.error("the guest collector wrote no samples; its output:\n%s", self.remote_log_tail())
        elif fetched is not None and not _is_json_array(fetched):
            ok = False
            log.error("the guest collector did not finish its file (JSON Lines kept); its output:\n%s",
                      self.remote_log_tail())
        if self.client is not None:
            self.client.close()
        return fetched, ok

    def run(self) -> int:
        self.connect()
        ok = False
        self._progress, self._host_thread, self._host_error = None, None, []
        try:
            ok = self._collect()
        except KeyboardInterrupt:
            log.warning("interrupted")
        finally:
            fetched, ok = self._finish(ok)
        if fetched is None:
            raise InputError(f"{self.vm_host}:{self.remote.output if self.remote else self.project}",
                             "no guest feature file could be copied back")
        if self._host_error:
            raise InputError(self.kepler_url, f"host collector failed: {self._host_error[0]}")
        rows = self.host_collector.rows if self.host_collector else 0
        log.info("run %s: guest file %s, host file %s (%d rows, %d gaps)%s", self.run_dir, self.vm_file.name,
                 self.host_file.name, rows, len(self.host_collector.gaps) if self.host_collector else 0,
                 "" if ok else " [partial]")
        if rows == 0:
            log.error("no host power rows: is Kepler at %s reporting VM %r?", self.kepler_url, self.vm_name)
        return 0 if ok and rows > 0 else 1


def _is_json_array(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(64).lstrip()
    return head.startswith(b"[")
