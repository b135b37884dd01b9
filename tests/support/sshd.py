"""A real OpenSSH sshd on 127.0.0.1 (free port, temporary host key, user key and config).

The server runs as the current user (root in CI) with the internal SFTP server. It fails loudly
with sshd's own log when it cannot start: a test needing it is never skipped.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import paramiko

from tests.support.engine_process import free_port, port_open

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
SSH_KEYGEN = shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen"

CONFIG = """\
Port {port}
ListenAddress 127.0.0.1
HostKey {host_key}
PidFile {folder}/sshd.pid
AuthorizedKeysFile {folder}/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
AllowUsers {user}
Subsystem sftp internal-sftp
LogLevel VERBOSE
MaxStartups 100:30:200
MaxSessions 64
"""


def keygen(path: Path, kind: str = "ed25519") -> Path:
    """A fresh OpenSSH key pair without passphrase at `path` (+ `.pub`)."""
    path.unlink(missing_ok=True)
    Path(f"{path}.pub").unlink(missing_ok=True)
    subprocess.run([SSH_KEYGEN, "-q", "-t", kind, "-N", "", "-C", "passerelle-test", "-f", str(path)],
                   check=True, capture_output=True)
    return path


class Sshd:
    """sshd with a temporary config. `root` is the folder the tests use as the SFTP drop area."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.user = getpass.getuser()
        self.host_key = folder / "ssh_host_ed25519_key"
        self.user_key = folder / "id_ed25519"
        self.known_hosts = folder / "known_hosts"
        self.log = folder / "sshd.log"
        self.root = folder / "sftp"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> Sshd:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.root.mkdir(exist_ok=True)
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # sshd's privilege separation dir
        if not self.host_key.exists():
            keygen(self.host_key)
        if not self.user_key.exists():
            keygen(self.user_key)
        (self.folder / "authorized_keys").write_bytes(Path(f"{self.user_key}.pub").read_bytes())
        self.write_known_hosts()
        config = self.folder / "sshd_config"
        text = CONFIG.format(port=self.port, host_key=self.host_key, folder=self.folder, user=self.user)
        config.write_text(text)
        self._launch(config, timeout)
        return self

    def _launch(self, config: Path, timeout: float) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while not port_open(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"sshd did not start on port {self.port}:\n{self.logs()}")
            time.sleep(0.05)

    def write_known_hosts(self) -> None:
        """Pin the current host key, as an operator would with ssh-keyscan."""
        key = Path(f"{self.host_key}.pub").read_text().split()
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {key[0]} {key[1]}\n")

    def change_host_key(self) -> None:
        """Restart with a new host key (a reinstalled or impersonated server); known_hosts unchanged."""
        self.stop()
        keygen(self.host_key)
        config = self.folder / "sshd_config"
        self._launch(config, 20.0)

    def restart(self) -> None:
        """Stop, then start again on the same port with the same keys (an sshd restart)."""
        self.stop()
        self._launch(self.folder / "sshd_config", 20.0)

    def stop(self) -> None:
        """Stop the listener and its per-connection children (they would keep serving old sessions)."""
        if self.proc is not None and self.proc.poll() is None:
            for child in children(self.proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGTERM)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def source_config(self, **extra: object) -> dict[str, object]:
        """Options of an `sftp` source reading `<root>/in` on this server."""
        return {"host": "127.0.0.1", "port": self.port, "username": self.user,
                "private_key": str(self.user_key), "known_hosts": str(self.known_hosts),
                "directory": str(self.root / "in"), **extra}

    def client(self) -> paramiko.SFTPClient:
        """An SFTP client as the remote party (the laboratory) would use."""
        transport = paramiko.Transport(("127.0.0.1", self.port))
        key = paramiko.Ed25519Key.from_private_key_file(str(self.user_key))
        transport.connect(username=self.user, pkey=key)
        client = paramiko.SFTPClient.from_transport(transport)
        assert client is not None
        return client

    def logs(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""



def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]
