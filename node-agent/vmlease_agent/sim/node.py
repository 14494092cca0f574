"""Simulated nodes on one machine: for the demo and the agent's tests.

A node is an agent process leading its own process group, a file-backed watchdog, and a harness
(outside that group) that kills the whole group when the watchdog is not fed in time — what a
hardware reset does to everything on a real node. Lease holders ("VMs") started on a node join
its process group, so killing or "resetting" the node kills them too.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from vmlease_agent.engine.errors import LeaseError
from vmlease_agent.rpc.client import AgentClient
from vmlease_agent.sim.watchdog_harness import spawn_harness


def script_path(name: str) -> str:
    """A console script next to the running interpreter (the venv), else on PATH."""
    local = os.path.join(os.path.dirname(sys.executable), name)
    return local if os.path.exists(local) else name


@dataclass
class SimNode:
    name: str
    workdir: str
    io_timeout: int = 1
    fire_timeout: int = 10
    kill_grace: int | None = None
    lockspaces: list[str] = field(default_factory=list)  # LS:HOST_ID:PATH:OFFSET[:IO]
    #: serve sanlock's client API (``--sanlock-api``) with sanlock.sock in this directory
    sanlock_run_dir: str | None = None
    agent: subprocess.Popen | None = None
    harness: subprocess.Popen | None = None
    pgids: list[int] = field(default_factory=list)

    @property
    def run_dir(self) -> str:
        return os.path.join(self.workdir, self.name)

    @property
    def watchdog_file(self) -> str:
        return os.path.join(self.run_dir, "watchdog")

    @property
    def events_file(self) -> str:
        return os.path.join(self.run_dir, "watchdog-events.jsonl")

    @property
    def log_file(self) -> str:
        return os.path.join(self.run_dir, "agent.log")

    @property
    def client(self) -> AgentClient:
        return AgentClient(self.run_dir, timeout=120)

    def start(self, wait: float = 30.0) -> None:
        """Start the agent leading a new process group (in our session, so holders can join it),
        and, once, the watchdog harness for it."""
        os.makedirs(self.run_dir, exist_ok=True)
        cmd = [
            script_path("vmlease-agent"),
            "--run-dir",
            self.run_dir,
            "--node-name",
            self.name,
            "--watchdog",
            f"file:{self.watchdog_file}",
            "--watchdog-fire-timeout",
            str(self.fire_timeout),
        ]
        if self.kill_grace is not None:
            cmd += ["--kill-grace", str(self.kill_grace)]
        for ls in self.lockspaces:
            cmd += ["--lockspace", ls]
        if self.sanlock_run_dir:
            cmd += ["--sanlock-api", "--sanlock-run-dir", self.sanlock_run_dir]
        log = open(self.log_file, "a")  # noqa: SIM115 - owned by the child
        self.agent = subprocess.Popen(cmd, stdout=log, stderr=log, process_group=0)
        log.close()
        self.pgids.append(self.agent.pid)
        deadline = time.monotonic() + wait
        while True:
            if self.agent.poll() is not None:
                raise RuntimeError(f"agent {self.name} exited: see {self.log_file}")
            try:
                AgentClient(self.run_dir, timeout=2).call("status")
                break
            except LeaseError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        # the harness stands for the hardware: it resets everything this node ever ran
        if self.harness is not None and self.harness.poll() is None:
            self.harness.kill()
            self.harness.wait()
        self.harness = spawn_harness(self.watchdog_file, self.pgids, self.events_file)

    @property
    def pgid(self) -> int:
        assert self.agent is not None
        return self.agent.pid

    def wait_joined(self, lockspace: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.client.call("status")
            for ls in st["lockspaces"]:
                if ls["name"] == lockspace and ls["state"] == "live":
                    return
            time.sleep(0.2)
        raise TimeoutError(f"{self.name} did not join {lockspace} within {timeout}s")

    def spawn_holder(
        self, resources: list[str], argv: list[str], owner: str = ""
    ) -> subprocess.Popen:
        """Run ``argv`` on this node holding ``resources`` (``vmlease client command``)."""
        cmd = [script_path("vmlease"), "client", "--run-dir", self.run_dir, "command"]
        if owner:
            cmd += ["--owner", owner]
        for r in resources:
            cmd += ["-r", r]
        pgid = self.pgid
        return subprocess.Popen(
            [*cmd, "-c", *argv],
            process_group=pgid,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def kill(self) -> None:
        """Power cut: SIGKILL every process group of the node (agents and holders)."""
        for pgid in self.pgids:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        if self.agent:
            self.agent.wait()

    def signal_agent(self, sig: int) -> None:
        assert self.agent is not None
        self.agent.send_signal(sig)

    def watchdog_events(self) -> list[dict]:
        try:
            with open(self.events_file) as f:
                return [json.loads(line) for line in f if line.strip()]
        except FileNotFoundError:
            return []

    def stop(self) -> None:
        """Tear down: stop the harness first (so it cannot fire), then kill the group."""
        if self.harness and self.harness.poll() is None:
            self.harness.kill()
            self.harness.wait()
        if self.agent:
            self.kill()  # every process group this node ran, even if its agent already died
