"""Start and stop the local stack's processes: Redis, Celery workers, a web server.

One implementation for the three places that run the stack on one machine: ``make run``
(manage.py demo), the end-to-end benchmark (benchmarks/stack.py) and the tests' real Redis and
workers (tests/conftest.py). Each process gets its own process group, so that stopping it also
stops the children it forked (a Celery worker's pool, beat)."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class LaunchError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def wait_for_port(port: int, timeout: float = 60.0, host: str = "127.0.0.1", proc=None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(host, port):
            return
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.1)
    raise LaunchError(f"nothing listens on {host}:{port}")


def redis_command(port: int, data_dir, persistent: bool = False) -> list[str]:
    """redis-server on loopback; ``persistent`` keeps an append-only file in ``data_dir`` (the demo),
    otherwise nothing survives a restart (tests, benchmarks)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise LaunchError("redis-server is not installed: apt-get install redis-server (make run and make test "
                          "install it).")
    return [binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(data_dir),
            "--appendonly", "yes" if persistent else "no", "--save", ""]


# For a worker whose tasks run for minutes or hours (builds, training): SIGTERM stops it at once, its task's
# message handed back to the broker after CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT (Celery's cold shutdown),
# instead of a warm shutdown that waits for the task to end.
STOP_AT_ONCE = {"REMAP_SIGTERM": "SIGQUIT"}


def worker_command(queues: str, hostname: str, beat_schedule=None, nice: int = 0) -> list[str]:
    """One Celery worker process (prefork, one child) on ``queues``; with ``beat_schedule`` it also
    runs the periodic sweeps."""
    cmd = [sys.executable, "-m", "celery", "-A", "skinweb", "worker", "-Q", queues, "--pool", "prefork",
           "--concurrency", "1", "--without-mingle", "--without-gossip", "--loglevel", "INFO",
           "--hostname", hostname]
    if beat_schedule:
        cmd += ["--beat", "--schedule", str(beat_schedule)]
    return ["nice", "-n", str(nice), *cmd] if nice else cmd


class Processes:
    """Processes started for one stack, stopped together: workers and servers first, Redis last."""

    def __init__(self, env: dict | None = None, log_dir=None, echo=None):
        self.env = env if env is not None else os.environ.copy()
        self.log_dir = Path(log_dir) if log_dir else None
        self.echo = echo  # a callable that is told each command line (the demo prints them)
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self._logs = []

    def start(self, name: str, cmd: list[str], ready_port: int | None = None, ready_text: bytes | None = None,
              timeout: float = 60.0, env: dict | None = None) -> subprocess.Popen:
        """Start ``cmd``; with ``ready_port`` wait until it listens there, with ``ready_text`` until its log
        (``log_dir``/name.log) shows it. ``env``: variables added to the stack's environment for this one."""
        if self.echo:
            self.echo(f"starting {name}: {' '.join(cmd)}")
        out = None
        if self.log_dir:
            out = open(self.log_dir / f"{name}.log", "ab")
            self._logs.append(out)
        proc = subprocess.Popen(cmd, cwd=ROOT, env={**self.env, **(env or {})}, stdout=out,
                                stderr=subprocess.STDOUT if out else None, process_group=0)
        self.procs.append((name, proc))
        if ready_port is not None:
            wait_for_port(ready_port, timeout, proc=proc)
        if ready_text is not None:
            self.wait_for_log(name, proc, ready_text, timeout)
        return proc

    def wait_for_log(self, name, proc, text: bytes, timeout: float) -> None:
        path = self.log_dir / f"{name}.log"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in path.read_bytes():
                return
            if proc.poll() is not None:
                break
            time.sleep(0.1)
        raise LaunchError(f"{name} did not start:\n{path.read_text(errors='replace')[-3000:]}")

    def dead(self) -> list[str]:
        return [name for name, p in self.procs if p.poll() is not None]

    def memory_mb(self, name: str, field: str = "VmHWM") -> dict:
        """Resident memory of a process and its children (a worker's pool, gunicorn's workers), in MB:
        at its peak (VmHWM) or now (VmRSS). Keys: "main" and "child <pid>"."""
        root = next(p.pid for n, p in self.procs if n == name)
        out = {}
        for status in Path("/proc").glob("[0-9]*/status"):
            try:
                fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
            except OSError:
                continue
            pid, ppid = int(fields["Pid"]), int(fields["PPid"])
            if pid == root or ppid == root:
                out["main" if pid == root else f"child {pid}"] = int(fields[field].split()[0]) / 1024
        return out

    def stop(self, name: str, timeout: float = 20.0) -> None:
        for n, p in self.procs:
            if n == name:
                _stop([p], timeout)

    def stop_all(self, timeout: float = 20.0) -> None:
        """SIGTERM to each main process (a Celery worker then shuts down warmly, its pool and beat
        children with it), SIGKILL to each process group still there after ``timeout`` seconds
        (children that outlived their parent included), and Redis last, so that workers can hand
        back unfinished messages on the way out."""
        _stop([p for n, p in self.procs if n != "redis"], timeout)
        _stop([p for n, p in self.procs if n == "redis"], timeout)
        for f in self._logs:
            f.close()
        self._logs = []


def _stop(procs, timeout):
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
