"""`passerelle run --workers N`: N engine processes on one machine, supervised by this one.

Python runs one core per process, so more throughput on one machine means more processes.
Each worker is an ordinary engine process (`passerelle run`) on the same configuration:

- they share the PostgreSQL store, which gives each delivery and each `received` message to
  one worker at a time (store/base.py, "Several processes"); SQLite is single-process, so
  `--workers` with SQLite is refused;
- MLLP listeners are opened with SO_REUSEPORT (`PASSERELLE_REUSE_PORT=1` in the workers'
  environment, see the mllp source's `reuse_port`): every worker listens on the same port and
  the kernel spreads incoming connections over them;
- the first worker alone serves the dashboard (enabled in engine.yaml): it reads and audits
  through the shared PostgreSQL store (engine/dashboard/pg_queries.py);
- this parent forwards SIGTERM/SIGINT to every worker and waits for their graceful stop; a
  worker that dies is started again after a backoff (1 s, doubling up to 30 s; back to 1 s once
  a worker ran a minute). The work it held is taken over by the others when its lease expires.

Workers on other machines are simply more `passerelle run` processes on the same store.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import structlog

from engine.config import Project
from engine.connectors.mllp.source import REUSE_PORT_ENV

log = structlog.get_logger("passerelle.workers")

WORKER_ENV = "PASSERELLE_WORKER"  # the worker's index, for its logs
FIRST_BACKOFF, MAX_BACKOFF, HEALTHY_AFTER = 1.0, 30.0, 60.0
POLL_SECONDS = 0.2
WORKER_MAIN = "import sys; from engine.cli import main; sys.exit(main(sys.argv[1:]))"


def refusal(project: Project, count: int) -> str:
    """Why these workers cannot run, or ''."""
    if count < 1:
        return "--workers must be at least 1"
    if project.engine.store.type == "sqlite":
        return ("--workers needs the PostgreSQL store: SQLite is single-process "
                "(set store: {type: postgresql, dsn: ...} in engine.yaml)")
    return ""


def serves_dashboard() -> bool:
    """With --workers, the first worker alone serves the dashboard (one port, one set of sessions);
    it reads the shared store, so it shows every worker's messages. A lone engine serves it."""
    return os.environ.get(WORKER_ENV, "0") == "0"


def run_workers(project: Project, config: Path, count: int) -> int:
    problem = refusal(project, count)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    command = [sys.executable, "-c", WORKER_MAIN, "run", "--config", str(config.resolve())]
    pool = WorkerPool(command, count, project.engine.shutdown_timeout)
    return pool.run()


@dataclass
class Worker:
    index: int
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    backoff: float = FIRST_BACKOFF
    restart_at: float = 0.0


class WorkerPool:
    def __init__(self, command: list[str], count: int, shutdown_timeout: float) -> None:
        self.command = command
        self.workers = [Worker(i) for i in range(count)]
        self.shutdown_timeout = shutdown_timeout
        self.stopping = False

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._request_stop)
        for worker in self.workers:
            self._start(worker)
        log.info("workers_started", count=len(self.workers))
        while not self.stopping:
            time.sleep(POLL_SECONDS)
            for worker in self.workers:
                self._watch(worker)
        return self._stop_all()

    def _request_stop(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True

    def _start(self, worker: Worker) -> None:
        env = {**os.environ, REUSE_PORT_ENV: "1", WORKER_ENV: str(worker.index)}
        worker.process = subprocess.Popen(self.command, env=env, preexec_fn=die_with_parent)  # noqa: PLW1509
        worker.started_at = time.monotonic()
        log.info("worker_started", worker=worker.index, pid=worker.process.pid)

    def _watch(self, worker: Worker) -> None:
        """Restart a worker that exited, after its backoff."""
        now = time.monotonic()
        if worker.process is not None and worker.process.poll() is not None:
            code = worker.process.returncode
            worker.backoff = FIRST_BACKOFF if now - worker.started_at > HEALTHY_AFTER else worker.backoff
            worker.restart_at = now + worker.backoff
            log.error("worker_exited", worker=worker.index, code=code, restart_in=worker.backoff)
            worker.backoff = min(MAX_BACKOFF, worker.backoff * 2)
            worker.process = None
        if worker.process is None and now >= worker.restart_at:
            self._start(worker)

    def _stop_all(self) -> int:
        """Forward SIGTERM; wait for graceful stops; SIGKILL what outlives the grace period."""
        running = [w.process for w in self.workers if w.process is not None and w.process.poll() is None]
        for process in running:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.shutdown_timeout + 10
        for process in running:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.info("workers_stopped")
        return 0 if all(p.returncode == 0 for p in running) else 1


def die_with_parent() -> None:
    """In the child (Linux): SIGTERM when the parent dies, so no worker outlives its supervisor."""
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
