"""A real RabbitMQ node on 127.0.0.1: free ports, temporary node name, data, logs, cookie and epmd.

Each node runs its own epmd on a free port (ERL_EPMD_PORT) and its own HOME (Erlang cookie), so
it never meets a system broker or another test run. It fails loudly with the broker's log when it
cannot start or stop: a test needing it is never skipped.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from pathlib import Path

import pika

from tests.support.engine_process import free_port

BIN = Path("/usr/lib/rabbitmq/bin")

CONFIG = """\
listeners.tcp.default = 127.0.0.1:{port}
loopback_users = none
log.console = false
log.file.level = info
"""


class RabbitMq:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.node = f"passerelle-test-{secrets.token_hex(4)}@localhost"
        self.env = {
            **os.environ,
            "HOME": str(folder),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(free_port()),
            "ERL_EPMD_PORT": str(free_port()),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_MNESIA_BASE": str(folder / "mnesia"),
            "RABBITMQ_LOG_BASE": str(folder / "log"),
            "RABBITMQ_CONFIG_FILE": str(folder / "rabbitmq"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(folder / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(folder / "rabbitmq.pid"),
        }
        self.out = folder / "server.out"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    def start(self, timeout: float = 60.0) -> RabbitMq:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "rabbitmq.conf").write_text(CONFIG.format(port=self.port))
        (self.folder / "enabled_plugins").write_text("[].\n")  # no management plugin: faster start
        with self.out.open("ab") as out:
            self.proc = subprocess.Popen([str(BIN / "rabbitmq-server")], env=self.env, stdout=out, stderr=out,
                                         start_new_session=True)
        pid_file = str(self.folder / "rabbitmq.pid")
        done = self.ctl("wait", pid_file, "--timeout", str(int(timeout)), check=False)
        if done.returncode != 0 or self.proc.poll() is not None:
            self.kill()
            raise RuntimeError(f"RabbitMQ node {self.node} did not start:\n{done.stdout}\n{self.logs()}")
        return self

    def ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([str(BIN / "rabbitmqctl"), "-n", self.node, *args], env=self.env,
                              capture_output=True, text=True, timeout=120, check=False)
        if check and done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
        return done

    def stop(self) -> None:
        """Stop the node cleanly (what a broker restart does to its clients), and its epmd."""
        if self.proc is None:
            return
        self.ctl("stop", str(self.folder / "rabbitmq.pid"), check=False)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.kill()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, 9)
            self.proc.wait(10)
        self.proc = None

    def close(self) -> None:
        """Stop the node and the epmd it started."""
        self.stop()
        subprocess.run(["epmd", "-port", self.env["ERL_EPMD_PORT"], "-kill"], env=self.env,
                       capture_output=True, timeout=10, check=False)

    def logs(self) -> str:
        files = [self.out, *sorted((self.folder / "log").glob("*.log"))]
        return "\n".join(f.read_text(errors="replace")[-4000:] for f in files if f.exists())

    def connection(self) -> pika.BlockingConnection:
        """A plain client connection, as a partner would use."""
        return pika.BlockingConnection(pika.URLParameters(self.url))

    def queue_depth(self, queue: str) -> int:
        with self.connection() as conn:
            return int(conn.channel().queue_declare(queue, passive=True).method.message_count)
