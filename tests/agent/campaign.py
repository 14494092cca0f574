"""An adversarial campaign with real agents: "two writers never".

K simulated nodes (real ``vmlease-agent`` daemons, file watchdogs supervised by the harness that
plays the hardware; see ``vmlease_agent.sim.node``) contend for R disk leases, while a seeded RNG
picks what happens next: holders start (one, or two on one node at the same instant), exit, are
SIGKILLed or release; agents are SIGKILLed (restarted later, with or without their state.json),
SIGTERMed with holders running (a rolling update), frozen (SIGSTOP, SIGCONT later, sometimes
past their deadline so the watchdog must fire), and one node's path to the lockspace stalls in
the kernel (FUSE, when available).

The oracle checks one invariant: each holder (``campaign_holder.py``) appends CLOCK_BOOTTIME
stamps to its own log only while it holds its lease, so for any two holders of one resource the
intervals [first stamp, last stamp] must not overlap. A watchdog fire is a node reset: every
process of the node dies at that instant (the harness SIGKILLs the node's process groups, which
holders join); a holder of that node started before the fire ends there, and one that wrote
later than the fire is reported as a harness defect (``survived_reset``).

Replay: the seed is printed; ``VMLEASE_CAMPAIGN_SEED=S`` repeats the same choices (the timing
of real processes still varies).
"""

from __future__ import annotations

import collections
import contextlib
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from vmlease_agent.engine.clock import boottime
from vmlease_agent.engine.errors import LeaseError
from vmlease_agent.rpc.client import AgentClient
from vmlease_agent.sim.node import SimNode

from .cluster import LS, N, W

HOLDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "campaign_holder.py")

#: How late after a fire a holder's stamp may be before we call it a survivor of the reset:
#: the harness takes its clock, then SIGKILLs the groups (microseconds apart).
RESET_SLACK = 0.2


# ---- the oracle ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Interval:
    resource: str
    holder: str  # e.g. "h17"
    node: str
    first: float
    last: float


@dataclass(frozen=True)
class Violation:
    resource: str
    a: Interval
    b: Interval

    def describe(self) -> str:
        a, b = self.a, self.b
        return (
            f"TWO WRITERS on {self.resource}: {a.holder}@{a.node} wrote "
            f"[{a.first:.3f}, {a.last:.3f}] and {b.holder}@{b.node} wrote "
            f"[{b.first:.3f}, {b.last:.3f}] (overlap {max(a.first, b.first):.3f}.."
            f"{min(a.last, b.last):.3f}, {min(a.last, b.last) - max(a.first, b.first):.3f} s)"
        )


def overlaps(intervals: list[Interval]) -> list[Violation]:
    """Every pair of intervals of one resource that share an instant (closed intervals: two
    distinct writers never write the same CLOCK_BOOTTIME stamp unless both were writing)."""
    found = []
    by_res: dict[str, list[Interval]] = collections.defaultdict(list)
    for iv in intervals:
        by_res[iv.resource].append(iv)
    for res, ivs in sorted(by_res.items()):
        ivs.sort(key=lambda x: (x.first, x.last))
        for i, a in enumerate(ivs):
            for b in ivs[i + 1 :]:
                if b.first > a.last:
                    break
                found.append(Violation(res, a, b))
    return found


def read_stamps(path: str) -> list[float]:
    """Complete lines only: a holder SIGKILLed mid-write leaves a partial last line."""
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return []
    return [float(x) for x in text.split("\n")[:-1] if x.strip()]


# ---- the campaign ----------------------------------------------------------------------------


@dataclass
class Holder:
    hid: str
    node: str
    resource: str
    log: str
    status: str
    proc: subprocess.Popen
    spawned: float  # boottime
    reset_at: float | None = None  # its node's watchdog fired while it lived

    def outcome(self) -> str:
        try:
            with open(self.status) as f:
                lines = f.read().split()
        except FileNotFoundError:
            return ""
        return lines[0] if lines else ""


@dataclass
class Node:
    sim: SimNode
    host_id: int
    fires_seen: int = 0
    #: what the node is going through: "" (up, free for faults) or the fault's name
    busy: str = ""
    #: timed continuations of the current fault: (boottime due, what, callable)
    pending: list[tuple[float, str, Callable[[], None]]] = field(default_factory=list)
    unhealthy_since: float | None = None


class Campaign:
    def __init__(
        self,
        work: str,
        seed: int,
        nodes: int = 3,
        resources: int = 2,
        faults: bool = True,
        stall: bool = True,
        log: Callable[[str], None] = print,
    ) -> None:
        self.work = work
        self.seed = seed
        self.rng = random.Random(seed)
        self.faults = faults
        self.say = log
        self.counts: collections.Counter[str] = collections.Counter()
        self.fault_counts: collections.Counter[str] = collections.Counter()
        self.holders: list[Holder] = []
        self.races: list[list[Holder]] = []
        self.nodes: list[Node] = []
        self.fs = None
        self.fs_mnt = ""
        self.fs_node = ""
        self.anomalies: list[str] = []
        self.started = 0.0
        self.ended = 0.0
        self.ls_path = os.path.join(work, "lockspace")
        self._init_disks(resources)
        if faults and stall:
            self._mount_stallfs()
        for i in range(1, nodes + 1):
            name = f"node-{chr(ord('a') + i - 1)}"
            path = self.fs.path if (self.fs and i == 1) else self.ls_path
            if self.fs and i == 1:
                self.fs_node = name
            sim = SimNode(
                name,
                work,
                io_timeout=N,
                fire_timeout=W,
                lockspaces=[f"{LS}:{i}:{path}:0:{N}"],
            )
            self.nodes.append(Node(sim, i))

    # -- setup and teardown

    def _init_disks(self, resources: int) -> None:
        vm = os.path.join(os.path.dirname(sys.executable), "vmlease")
        with open(self.ls_path, "wb") as f:
            f.truncate(1 << 20)
        subprocess.run(
            [vm, "direct", "init", "-s", f"{LS}:0:{self.ls_path}:0", "-o", str(N)],
            check=True,
            capture_output=True,
        )
        self.resources = []
        for r in range(resources):
            path = os.path.join(self.work, f"res{r}.lease")
            with open(path, "wb") as f:
                f.truncate(1 << 20)
            spec = f"{LS}:res{r}:{path}:0"
            subprocess.run([vm, "direct", "init", "-r", spec], check=True, capture_output=True)
            self.resources.append(spec)

    def _mount_stallfs(self) -> None:
        from stallfs import StallFs
        from stallfs_fixture import stallfs_skip_reason

        reason = stallfs_skip_reason()
        if reason:
            self.say(f"campaign: no storage stalls ({reason})")
            return
        self.fs_mnt = tempfile.mkdtemp(prefix="vmlease-campaign-fs-")
        self.fs = StallFs(self.fs_mnt, backing=self.ls_path)

    def start(self) -> None:
        for n in self.nodes:
            n.sim.start()
        for n in self.nodes:
            n.sim.wait_joined(LS)
        self.started = boottime()

    def close(self) -> None:
        """Stop everything: holders, the stall (first: a process stuck on it cannot die), nodes."""
        for h in self.holders:
            if h.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    h.proc.kill()
        if self.fs:
            with contextlib.suppress(Exception):
                self.fs.resume()
        for n in self.nodes:
            with contextlib.suppress(ProcessLookupError):
                if n.sim.agent and n.sim.agent.poll() is None:
                    n.sim.agent.send_signal(signal.SIGCONT)
            n.sim.stop()
        for h in self.holders:
            with contextlib.suppress(subprocess.TimeoutExpired):
                h.proc.wait(timeout=10)
            for pipe in (h.proc.stdout, h.proc.stderr):
                if pipe:
                    pipe.close()
        if self.fs:
            self.fs.close()
            shutil.rmtree(self.fs_mnt, ignore_errors=True)
            self.fs = None

    # -- the loop

    def run(self, seconds: float) -> None:
        self.say(
            f"campaign: seed {self.seed} (replay: VMLEASE_CAMPAIGN_SEED={self.seed}), "
            f"{len(self.nodes)} nodes, {len(self.resources)} resources, "
            f"faults {'on' if self.faults else 'off'}, storage stalls "
            f"{'on ' + self.fs_node if self.fs else 'off'}, {seconds:.0f} s"
        )
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.observe()
            self.act()
            time.sleep(self.rng.uniform(0.05, 0.5))
        # let every fault run its course (restart, resume) before judging
        quiet_end = time.monotonic() + 60
        while time.monotonic() < quiet_end and any(n.busy for n in self.nodes):
            self.observe()
            time.sleep(0.1)
        self.observe()
        self.ended = boottime()

    def alive(self, n: Node) -> bool:
        return n.sim.agent is not None and n.sim.agent.poll() is None

    def observe(self) -> None:
        now = boottime()
        for n in self.nodes:
            fired = [e for e in n.sim.watchdog_events() if e["event"] == "fired"]
            for e in fired[n.fires_seen :]:
                self.counts["watchdog_fires"] += 1
                self.fault_counts_fire(n)
                for h in self.holders:
                    if h.node == n.sim.name and h.spawned < e["at"] and h.reset_at is None:
                        h.reset_at = e["at"]
                        if h.proc.poll() is None:
                            # the harness kills the node's groups; anything left is our defect
                            time.sleep(0.05)
                        if h.proc.poll() is None:
                            self.anomalies.append(
                                f"{h.hid}@{n.sim.name} still ran after the fire at {e['at']:.3f}"
                            )
                            h.proc.kill()
            n.fires_seen = len(fired)
            # continuations of the current fault
            for item in sorted(n.pending, key=lambda x: x[0]):
                if item[0] <= now:
                    n.pending.remove(item)
                    item[2]()
            if not n.pending and n.busy:
                n.busy = ""
            # a node whose agent died (a reset) reboots: a new agent after a moment
            if not n.busy and not self.alive(n):
                self._schedule_restart(n, "reboot", self.rng.uniform(0.5, 4.0))
            elif not n.busy:
                self._heal(n, now)
        for h in self.holders:
            h.proc.poll()

    def fault_counts_fire(self, n: Node) -> None:
        self.counts[f"fires_during_{n.busy or 'nothing'}"] += 1

    def _heal(self, n: Node, now: float) -> None:
        """An agent that lost its lockspace (a failed renewal: it leaves it, holders or not) and
        is not waiting out anything is restarted (SIGTERM, then a new agent: it joins again), as
        an operator or the pod's probe would."""
        try:
            st = AgentClient(n.sim.run_dir, timeout=2).call("status")
        except LeaseError:
            return
        ok = any(ls["name"] == LS and ls["state"] in ("live", "joining") for ls in st["lockspaces"])
        if ok or st.get("leases") or st["watchdog"].get("new_leases_wait"):
            n.unhealthy_since = None
            return
        if n.unhealthy_since is None:
            n.unhealthy_since = now
        elif now - n.unhealthy_since > 2.0:
            n.unhealthy_since = None
            self.counts["heal_restarts"] += 1
            self._sigterm_restart(n, "heal", 0.2)

    # -- actions

    def act(self) -> None:
        actions: list[tuple[float, Callable[[], None]]] = [
            (10, self.start_holder),
            (2, self.race_local),
            (2, self.kill_holder),
            (2, self.release_holder),
        ]
        if self.faults:
            actions += [
                (0.5, self.agent_sigkill),
                (0.3, self.agent_sigkill_state_lost),
                (0.5, self.agent_sigterm),
                (0.5, self.agent_freeze),
            ]
            if self.fs:
                actions.append((0.4, self.storage_stall))
        total = sum(w for w, _ in actions)
        x = self.rng.uniform(0, total)
        for w, fn in actions:
            x -= w
            if x <= 0:
                fn()
                return

    def _up(self) -> list[Node]:
        return [n for n in self.nodes if self.alive(n) and not n.busy]

    def _live_holders(self, acquired: bool = True) -> list[Holder]:
        return [
            h
            for h in self.holders
            if h.proc.poll() is None and (not acquired or h.outcome() == "acquired")
        ]

    def _spawn(self, n: Node, resource: str, at: float) -> Holder | None:
        hid = f"h{len(self.holders)}"
        log = os.path.join(self.work, f"{hid}.log")
        status = os.path.join(self.work, f"{hid}.status")
        lifetime = self.rng.choice([self.rng.uniform(0.3, 3.0), self.rng.uniform(3.0, 20.0)])
        argv = [
            sys.executable,
            HOLDER,
            n.sim.run_dir,
            resource,
            log,
            status,
            repr(at),
            repr(lifetime),
            str(self.rng.randrange(1 << 30)),
        ]
        spawned = boottime()
        try:
            proc = subprocess.Popen(
                argv,
                process_group=n.sim.pgid,  # the node's: a reset kills it
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=open(os.path.join(self.work, f"{hid}.err"), "w"),  # noqa: SIM115
            )
        except OSError as e:  # the node's group vanished (reset) just now
            self.counts["spawn_failed"] += 1
            self.say(f"campaign: cannot start a holder on {n.sim.name}: {e}")
            return None
        h = Holder(hid, n.sim.name, resource, log, status, proc, spawned)
        self.holders.append(h)
        self.counts["holders_started"] += 1
        return h

    def start_holder(self) -> None:
        up = [n for n in self.nodes if self.alive(n) and n.busy != "freeze"]
        if not up:
            return
        n = self.rng.choice(up)
        if sum(1 for h in self._live_holders(False) if h.node == n.sim.name) >= 4:
            return
        self._spawn(n, self.rng.choice(self.resources), 0.0)

    def race_local(self) -> None:
        """Two holders on one node asking for the same lease at the same instant."""
        up = [n for n in self.nodes if self.alive(n) and n.busy != "freeze"]
        if not up:
            return
        n = self.rng.choice(up)
        res = self.rng.choice(self.resources)
        at = boottime() + 0.6  # both are running (python started) by then
        pair = [self._spawn(n, res, at), self._spawn(n, res, at)]
        if all(pair):
            self.counts["races"] += 1
            self.races.append(pair)  # type: ignore[arg-type]

    def kill_holder(self) -> None:
        live = self._live_holders()
        if live:
            self.rng.choice(live).proc.kill()
            self.counts["holder_sigkill"] += 1

    def release_holder(self) -> None:
        live = self._live_holders()
        if live:
            with contextlib.suppress(ProcessLookupError):
                self.rng.choice(live).proc.send_signal(signal.SIGUSR1)
                self.counts["holder_release"] += 1

    def _fault_node(self) -> Node | None:
        up = self._up()
        if not up or sum(1 for n in self.nodes if n.busy) >= 2:
            return None
        return self.rng.choice(up)

    def _schedule_restart(self, n: Node, why: str, delay: float, lose_state: bool = False) -> None:
        n.busy = n.busy or why

        def restart() -> None:
            if n.sim.harness is not None and n.sim.harness.poll() is not None:
                self._reboot(n)
            elif lose_state:
                self._lose_state(n)
            self._prune_groups(n)
            try:
                n.sim.start()
                self.counts["agent_starts"] += 1
            except Exception as e:  # retried: the campaign goes on
                self.counts["agent_start_failed"] += 1
                self.say(f"campaign: {n.sim.name} did not start ({e}); retrying")
                n.pending.append((boottime() + 1.0, "restart", restart))

        n.pending.append((boottime() + delay, "restart", restart))

    def _lose_state(self, n: Node) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(n.sim.run_dir, "state.json"))

    def _reboot(self, n: Node) -> None:
        """The watchdog fired: the node comes back with its watchdog stopped (the device file
        removed: the next harness creates it disarmed), and usually without its run directory
        (a tmpfs: state.json is gone; kept sometimes, as if the reboot did not clear it)."""
        self.counts["reboots"] += 1
        os.unlink(n.sim.watchdog_file)
        if self.rng.random() < 0.7:
            self.counts["reboots_state_lost"] += 1
            self._lose_state(n)

    def _prune_groups(self, n: Node) -> None:
        """Forget process groups of this node that no longer exist: their ids may be reused by
        other nodes' processes, which this node's next harness must never kill."""
        alive = []
        for pgid in n.sim.pgids:
            try:
                os.killpg(pgid, 0)
                alive.append(pgid)
            except ProcessLookupError:
                pass
        n.sim.pgids[:] = alive

    def _holders_on(self, n: Node) -> int:
        return sum(1 for h in self._live_holders() if h.node == n.sim.name)

    def agent_sigkill(self, lose_state: bool = False) -> None:
        n = self._fault_node()
        if n is None:
            return
        kind = "agent_sigkill_state_lost" if lose_state else "agent_sigkill"
        self.fault_counts[kind] += 1
        self.fault_counts[f"{kind}_with_holders"] += bool(self._holders_on(n))
        n.sim.agent.send_signal(signal.SIGKILL)
        n.sim.agent.wait()
        # back before the deadline (adopt), or long after it (fence or reset)
        delay = self.rng.choice([self.rng.uniform(0.2, 3.0), self.rng.uniform(3.0, 14.0)])
        self._schedule_restart(n, kind, delay, lose_state)

    def agent_sigkill_state_lost(self) -> None:
        self.agent_sigkill(lose_state=True)

    def _sigterm_restart(self, n: Node, kind: str, delay: float) -> None:
        n.busy = kind
        n.sim.agent.send_signal(signal.SIGTERM)
        asked = boottime()

        def wait_exit() -> None:
            if n.sim.agent.poll() is None:
                if boottime() - asked > 20:
                    self.anomalies.append(f"{n.sim.name}: agent ignored SIGTERM for 20 s")
                    n.sim.agent.kill()
                n.pending.append((boottime() + 0.1, "wait-exit", wait_exit))
                return
            self._schedule_restart(n, kind, delay)

        n.pending.append((boottime() + 0.1, "wait-exit", wait_exit))

    def agent_sigterm(self) -> None:
        n = self._fault_node()
        if n is None:
            return
        self.fault_counts["agent_sigterm"] += 1
        self.fault_counts["agent_sigterm_with_holders"] += bool(self._holders_on(n))
        # a new agent must re-arm within W (4 s), and starting takes about a second
        self._sigterm_restart(n, "agent_sigterm", self.rng.uniform(0.05, 1.5))

    def agent_freeze(self) -> None:
        n = self._fault_node()
        if n is None:
            return
        held = bool(self._holders_on(n))
        # shorter than W (harmless), or past the deadline (the watchdog must fire if it holds)
        long = self.rng.random() < 0.6
        seconds = self.rng.uniform(W + 2, 8 * N + W + 2) if long else self.rng.uniform(0.5, 2.5)
        kind = "agent_freeze_long" if long else "agent_freeze_short"
        self.fault_counts[kind] += 1
        self.fault_counts[f"{kind}_with_holders"] += held
        n.busy = "freeze"
        agent = n.sim.agent
        agent.send_signal(signal.SIGSTOP)

        def thaw() -> None:
            if agent.poll() is None:
                agent.send_signal(signal.SIGCONT)

        n.pending.append((boottime() + seconds, "thaw", thaw))

    def storage_stall(self) -> None:
        n = next(x for x in self.nodes if x.sim.name == self.fs_node)
        if n.busy or not self.alive(n) or sum(1 for x in self.nodes if x.busy) >= 2:
            return
        seconds = self.rng.uniform(2.0, 8 * N + W + 4)
        self.fault_counts["storage_stall"] += 1
        self.fault_counts["storage_stall_with_holders"] += bool(self._holders_on(n))
        n.busy = "storage_stall"
        self.fs.stall()
        n.pending.append((boottime() + seconds, "resume", self.fs.resume))

    # -- the verdict

    def intervals(self) -> list[Interval]:
        out = []
        for h in self.holders:
            stamps = read_stamps(h.log)
            if not stamps:
                continue
            first, last = stamps[0], stamps[-1]
            if h.reset_at is not None:
                if last > h.reset_at + RESET_SLACK:
                    self.counts["survived_reset"] += 1
                    self.anomalies.append(
                        f"{h.hid}@{h.node} wrote until {last:.3f}, after its node's reset at "
                        f"{h.reset_at:.3f}: the harness did not kill it"
                    )
                last = min(last, h.reset_at) if first <= h.reset_at else last
            out.append(Interval(h.resource, f"{h.hid}(pid {h.proc.pid})", h.node, first, last))
        return out

    def tally(self) -> None:
        for h in self.holders:
            o = h.outcome()
            self.counts[
                {"acquired": "acquisitions", "refused": "refusals"}.get(o, "no_answer")
            ] += 1
        for pair in self.races:
            got = sum(1 for h in pair if h.outcome() == "acquired")
            self.counts[f"races_won_by_{got}"] += 1
        for n in self.nodes:
            try:
                with open(n.sim.log_file) as f:
                    text = f.read()
            except FileNotFoundError:
                continue
            self.counts["fencing"] += len(re.findall(r"event fencing ", text))
            self.counts["fence_actions"] += len(re.findall(r"event fence ", text))
            self.counts["state_not_adopted"] += len(re.findall(r"event state_not_adopted", text))
            self.counts["adopted"] += len(re.findall(r"event adopted ", text))

    def summary(self, violations: list[Violation]) -> str:
        minutes = max(self.ended - self.started, 1e-9) / 60
        c = self.counts
        faults = ", ".join(f"{k}={v}" for k, v in sorted(self.fault_counts.items())) or "none"
        return (
            f"campaign summary: seed={self.seed} duration={self.ended - self.started:.0f}s "
            f"holders={c['holders_started']} acquisitions={c['acquisitions']} "
            f"({c['acquisitions'] / minutes:.1f}/min) refusals={c['refusals']} "
            f"no_answer={c['no_answer']} races={c['races']} (won by 0/1/2: "
            f"{c['races_won_by_0']}/{c['races_won_by_1']}/{c['races_won_by_2']}) "
            f"holder_sigkill={c['holder_sigkill']} holder_release={c['holder_release']} "
            f"watchdog_fires={c['watchdog_fires']} fencing={c['fencing']} "
            f"fence_actions={c['fence_actions']} adopted={c['adopted']} "
            f"state_not_adopted={c['state_not_adopted']} agent_starts={c['agent_starts']} "
            f"reboots={c['reboots']} (state lost {c['reboots_state_lost']}) "
            f"heal_restarts={c['heal_restarts']} faults: {faults} "
            f"anomalies={len(self.anomalies)} violations={len(violations)}"
        )

    def report(self, violations: list[Violation], lines: int = 40) -> str:
        """What a failure shows: seed, each violation, and the nodes' recent events."""
        out = [f"seed {self.seed} (replay: VMLEASE_CAMPAIGN_SEED={self.seed})"]
        nodes = set()
        for v in violations[:10]:
            out.append(v.describe())
            nodes.update({v.a.node, v.b.node})
        out += [f"anomaly: {a}" for a in self.anomalies[:20]]
        for n in self.nodes:
            if n.sim.name not in nodes:
                continue
            out.append(f"--- {n.sim.name} watchdog: {n.sim.watchdog_events()}")
            try:
                with open(n.sim.log_file) as f:
                    events = [x.rstrip() for x in f if "event " in x or "FIRED" in x]
            except FileNotFoundError:
                events = []
            out.append(f"--- {n.sim.name} agent events (last {lines}):")
            out += events[-lines:]
        return "\n".join(out)

    def verdict(self) -> tuple[list[Violation], str]:
        self.tally()
        violations = overlaps(self.intervals())
        return violations, self.summary(violations)


def campaign_seed() -> int:
    env = os.environ.get("VMLEASE_CAMPAIGN_SEED")
    return int(env) if env else random.SystemRandom().randrange(1 << 31)
