"""Fixtures that run the real brainstemd: `brainstemd --dev` on 127.0.0.1:0 in a temp state dir, its gRPC
address read from the systemd notify protocol (READY=1, STATUS=… grpc=ADDR). Every daemon a test starts
is stopped (SIGTERM, then kill) when the test or session ends.

Needs the binaries: BRAINSTEM_BIN_DIR (default: target/debug of the repository).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import tempfile
import time

import pytest

import brainstem

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
STARTUP_DEADLINE_S = 30.0
STOP_DEADLINE_S = 10.0


def bin_dir() -> str:
    path = os.environ.get("BRAINSTEM_BIN_DIR", os.path.join(REPO, "target", "debug"))
    return path if os.path.isabs(path) else os.path.join(REPO, path)


class Daemon:
    def __init__(self, work_dir: str, listen: str = "127.0.0.1:0"):
        self.work_dir = work_dir
        self.state_dir = os.path.join(work_dir, "state")
        self.listen = listen
        self.proc = None
        self.addr = None
        self.notify = None

    def start(self) -> "Daemon":
        exe = os.path.join(bin_dir(), "brainstemd")
        if not os.access(exe, os.X_OK):
            pytest.fail(f"{exe} is missing: build it first (cargo build), or set BRAINSTEM_BIN_DIR")
        notify_path = os.path.join(self.work_dir, f"notify-{time.monotonic_ns()}.sock")
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(notify_path)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BRAINSTEM_", "WATCHDOG_"))}
        env["NOTIFY_SOCKET"] = notify_path
        env.setdefault("RUST_LOG", "warn")
        self.log = open(os.path.join(self.work_dir, "brainstemd.log"), "ab")
        self.proc = subprocess.Popen(
            [exe, "--dev", "--state-dir", self.state_dir, "--listen", self.listen, "--metrics-listen", "127.0.0.1:0"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + STARTUP_DEADLINE_S
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"brainstemd exited {self.proc.returncode} before READY=1; see {self.work_dir}/brainstemd.log")
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"brainstemd sent no READY=1 within {STARTUP_DEADLINE_S} s")
            self.notify.settimeout(min(left, 0.25))
            try:
                text = self.notify.recv(65536).decode("utf-8", "replace")
            except socket.timeout:
                continue
            lines = text.split("\n")
            if "READY=1" in lines:
                status = next((l for l in lines if l.startswith("STATUS=")), "")
                m = re.search(r"grpc=(\S+)", status)
                assert m, f"no grpc= in {status!r}"
                self.addr = m.group(1)
                metrics = re.search(r"metrics=(\S+)", status)
                self.metrics_addr = metrics.group(1) if metrics else None
                return self

    def metric(self, line_prefix: str) -> float:
        """The value of the first /metrics line starting with `line_prefix` (0 when absent)."""
        import urllib.request

        assert self.metrics_addr, "no metrics= in the daemon's STATUS"
        with urllib.request.urlopen(f"http://{self.metrics_addr}/metrics", timeout=10) as reply:
            for line in reply.read().decode().splitlines():
                if line.startswith(line_prefix):
                    return float(line.rsplit(" ", 1)[1])
        return 0.0

    @property
    def pki(self) -> str:
        return os.path.join(self.state_dir, "pki")

    def connect(self, **kwargs) -> brainstem.Client:
        kwargs.setdefault("breaker", brainstem.CircuitBreaker())
        return brainstem.connect(self.addr, state_dir=self.state_dir, **kwargs)

    def connect_async(self, **kwargs) -> brainstem.AsyncClient:
        kwargs.setdefault("breaker", brainstem.CircuitBreaker())
        return brainstem.connect_async(self.addr, state_dir=self.state_dir, **kwargs)

    def issue_cert(self, principal: str):
        """(cert_path, key_path) of a new client certificate for `principal` (no grants)."""
        ctl = os.path.join(bin_dir(), "brainstemctl")
        res = subprocess.run(
            [ctl, "--state-dir", self.state_dir, "certs", "issue", "--principal", principal],
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        )
        assert res.returncode == 0, res.stdout + res.stderr
        name = principal.rstrip("/").rsplit("/", 1)[-1]
        clients = os.path.join(self.pki, "clients")
        return os.path.join(clients, f"{name}.pem"), os.path.join(clients, f"{name}.key")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_DEADLINE_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.notify is not None:
            self.notify.close()
            self.notify = None
        if getattr(self, "log", None):
            self.log.close()
            self.log = None


@pytest.fixture(scope="session")
def daemon():
    with tempfile.TemporaryDirectory(prefix="brainstem-pytest-") as work:
        d = Daemon(work).start()
        try:
            yield d
        finally:
            d.stop()


@pytest.fixture
def own_daemon():
    """A daemon of the test's own (it may be stopped and started again on the same address)."""
    with tempfile.TemporaryDirectory(prefix="brainstem-pytest-own-") as work:
        started = []

        def start(listen="127.0.0.1:0"):
            d = Daemon(work, listen).start()
            started.append(d)
            return d

        try:
            yield start
        finally:
            for d in started:
                d.stop()


@pytest.fixture
def bs(daemon):
    client = daemon.connect()
    try:
        yield client
    finally:
        client.close()


def free_port() -> int:
    """A port nothing listens on (bound then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
