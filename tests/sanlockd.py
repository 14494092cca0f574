"""Running the real sanlock 3.8.5 daemon for tests and benchmarks; driving it with python-sanlock.

The daemon runs as ``sanlock daemon -D -w 0 -l 0 -U root -G root`` (foreground, no watchdog, no
mlockall) with its own SANLOCK_RUN_DIR, so several can run side by side and none touches
/run/sanlock. This sandbox forbids raising RLIMIT_MEMLOCK, which the daemon does at start-up and
treats as fatal; a tiny LD_PRELOAD shim whose setrlimit() returns 0 works around it. The shim is a
test fixture, compiled with gcc into a temporary directory when first needed.

python-sanlock reads SANLOCK_RUN_DIR once per process, and ``sanlock.register()`` ties leases to
the calling process's connection, so every client runs in a child process
(``python sanlockd.py client``) that takes JSON requests on stdin: the lease holder is a process
whose death releases its leases, exactly as for a VM.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

SHIM_C = """
#include <sys/resource.h>
int setrlimit(__rlimit_resource_t resource, const struct rlimit *rlim)
{ (void)resource; (void)rlim; return 0; }
"""

_shim_path: str | None = None


def sanlock_skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "the sanlock daemon needs root"
    if not shutil.which("sanlock"):
        return "the sanlock binary is missing"
    if not shutil.which("gcc"):
        return "gcc is needed to build the setrlimit shim for the sanlock daemon"
    try:
        import sanlock  # noqa: F401
    except ImportError:
        return "python3-sanlock is not importable"
    return None


def build_shim() -> str:
    """Compile the setrlimit shim once per process; returns the .so path."""
    global _shim_path
    if _shim_path and os.path.exists(_shim_path):
        return _shim_path
    d = tempfile.mkdtemp(prefix="vmlease-slshim-")
    src, so = os.path.join(d, "shim.c"), os.path.join(d, "shim.so")
    with open(src, "w") as f:
        f.write(SHIM_C)
    subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-o", so, src], check=True)
    _shim_path = so
    return so


class SanlockDaemon:
    """One sanlock daemon with a private run directory."""

    def __init__(self, prefix: list[str] | tuple[str, ...] = ()) -> None:
        """``prefix``: argv put before the daemon's own, e.g. ``nsenter -t PID -m -u -n --`` to
        run it inside a simulated host's namespaces (tests/libvirt/hosts.py): the killpath
        helpers it runs then see that host's /run/libvirt. It must exec, not fork, the daemon."""
        self.run_dir = tempfile.mkdtemp(prefix="vmlease-sanlockd-")
        self.log = open(os.path.join(self.run_dir, "daemon.log"), "w+")  # noqa: SIM115
        env = {**os.environ, "SANLOCK_RUN_DIR": self.run_dir, "LD_PRELOAD": build_shim()}
        self.proc = subprocess.Popen(
            [*prefix, "sanlock", "daemon", "-D", "-w", "0", "-l", "0", "-U", "root", "-G", "root"],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        sock = os.path.join(self.run_dir, "sanlock.sock")
        deadline = time.monotonic() + 10
        while not os.path.exists(sock):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"sanlock daemon did not start: {self.log_text()}")
            time.sleep(0.02)

    def log_text(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-4000:]

    def client(self) -> SanlockClient:
        return SanlockClient(self.run_dir)

    def stop(self) -> None:
        """Shut the daemon down (forced: it refuses while lockspaces are joined), then make sure
        it and its helper process are gone (they lead their own process group)."""
        if self.proc.poll() is None:
            subprocess.run(
                ["sanlock", "shutdown", "-f", "1"],
                env={**os.environ, "SANLOCK_RUN_DIR": self.run_dir},
                capture_output=True,
                timeout=10,
            )
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.log.close()
        shutil.rmtree(self.run_dir, ignore_errors=True)


class SanlockError(Exception):
    def __init__(self, errno: int, msg: str) -> None:
        super().__init__(f"sanlock error {errno}: {msg}")
        self.errno = errno


class SanlockClient:
    """A child process calling python-sanlock for us; its registered fd lives as long as it."""

    def __init__(self, run_dir: str) -> None:
        env = {**os.environ, "SANLOCK_RUN_DIR": run_dir}
        env.pop("LD_PRELOAD", None)
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "client"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
            env=env,
        )

    def call(self, op: str, **kw):
        self.proc.stdin.write(json.dumps({"op": op, **kw}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"sanlock client died (rc {self.proc.wait()})")
        reply = json.loads(line)
        if "error" in reply:
            raise SanlockError(reply["error"], reply["msg"])
        return reply["result"]

    def close(self) -> None:
        """Exit the child: the daemon releases whatever it held."""
        if self.proc.poll() is None:
            with contextlib.suppress(BrokenPipeError):
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()


# ---- the child side ---------------------------------------------------------------------------


def _client_main() -> None:
    import sanlock

    fd = None

    def disks(req):
        return [(req["path"], req.get("offset", 0))]

    def target(req):
        """Act for another process (``pid``), or for ourselves through the registered fd."""
        return {"pid": req["pid"]} if "pid" in req else {"slkfd": fd}

    def op_pid(req):
        return os.getpid()

    def op_add_lockspace(req):
        t0 = time.monotonic()
        sanlock.add_lockspace(
            req["lockspace"].encode(),
            req["host_id"],
            req["path"],
            req.get("offset", 0),
            iotimeout=req.get("io_timeout", 0),
            wait=req.get("wait", True),
        )
        return time.monotonic() - t0

    def op_inq_lockspace(req):
        return sanlock.inq_lockspace(
            req["lockspace"].encode(),
            req["host_id"],
            req["path"],
            req.get("offset", 0),
            wait=req.get("wait", False),
        )

    def op_rem_lockspace(req):
        sanlock.rem_lockspace(
            req["lockspace"].encode(),
            req["host_id"],
            req["path"],
            req.get("offset", 0),
            wait=req.get("wait", True),
            unused=req.get("unused", False),
        )

    def op_get_lockspaces(req):
        return [
            {k: v.decode() if isinstance(v, bytes) else v for k, v in ls.items()}
            for ls in sanlock.get_lockspaces()
        ]

    def op_register(req):
        nonlocal fd
        fd = sanlock.register()
        return fd

    def op_unregister(req):
        """Close the registered connection while this process lives on."""
        nonlocal fd
        os.close(fd)
        fd = None

    def op_killpath(req):
        sanlock.killpath(req["path"], req["args"], slkfd=fd)

    def op_acquire(req):
        sanlock.acquire(
            req["lockspace"].encode(),
            req["resource"].encode(),
            disks(req),
            shared=req.get("shared", False),
            version=req.get("version"),
            lvb=req.get("lvb", False),
            **target(req),
        )

    def op_set_lvb(req):
        ls, res = req["lockspace"].encode(), req["resource"].encode()
        sanlock.set_lvb(ls, res, disks(req), req["data"].encode("latin-1"))

    def op_get_lvb(req):
        ls, res = req["lockspace"].encode(), req["resource"].encode()
        return sanlock.get_lvb(ls, res, disks(req), req["size"]).decode("latin-1")

    def op_convert(req):
        """python-sanlock 3.8 has no convert: libsanlock's sanlock_convert through ctypes
        (the resource struct alone, as the library sends it)."""
        import ctypes
        import struct

        lib = ctypes.CDLL("libsanlock.so.1", use_errno=True)
        flags = 0x4 if req["shared"] else 0  # SANLK_RES_SHARED: to shared, else exclusive
        res = struct.pack(
            "48s48sQQIIII", req["lockspace"].encode(), req["resource"].encode(), 0, 0, 0, 0,
            flags, 0,
        )  # fmt: skip
        sock, pid = (-1, req["pid"]) if "pid" in req else (fd, 0)
        nowait = 0x8 if req.get("nowait") else 0  # SANLK_CONVERT_OWNER_NOWAIT
        rv = lib.sanlock_convert(sock, pid, nowait, ctypes.create_string_buffer(res, 128))
        if rv < 0:  # errno as python-sanlock gives it: positive below -200, else the code
            raise sanlock.SanlockException(-rv if rv > -200 else rv, "Unable to convert", "")

    def op_release(req):
        sanlock.release(
            req["lockspace"].encode(), req["resource"].encode(), disks(req), **target(req)
        )

    def op_inquire(req):
        return [
            {
                "lockspace": r["lockspace"].decode(),
                "resource": r["resource"].decode(),
                "flags": r["flags"],
                "version": r["version"],
                "disks": [list(d) for d in r["disks"]],
            }
            for r in sanlock.inquire(**target(req))
        ]

    def op_request(req):
        action = {"force": sanlock.REQ_FORCE, "graceful": sanlock.REQ_GRACEFUL}[req["action"]]
        sanlock.request(req["lockspace"].encode(), req["resource"].encode(), disks(req),
                        action=action, version=req.get("version"))  # fmt: skip

    def op_read_resource_owners(req):
        return sanlock.read_resource_owners(
            req["lockspace"].encode(), req["resource"].encode(), disks(req)
        )

    def op_get_hosts(req):
        return sanlock.get_hosts(req["lockspace"].encode(), req.get("host_id", 0))

    def op_read_lockspace(req):
        found = sanlock.read_lockspace(req["path"], req.get("offset", 0))
        return {k: v.decode() if isinstance(v, bytes) else v for k, v in found.items()}

    events = {}  # lockspace -> the fd reg_event returned

    def op_reg_event(req):
        events[req["lockspace"]] = sanlock.reg_event(req["lockspace"].encode())

    def op_get_event(req):
        """The events pending on the lockspace's listener, waiting up to ``timeout`` s for
        the first."""
        import select

        fd = events[req["lockspace"]]
        if not select.select([fd], [], [], req.get("timeout", 0))[0]:
            return []
        return sanlock.get_event(fd)

    def op_end_event(req):
        sanlock.end_event(events.pop(req["lockspace"]), req["lockspace"].encode())

    def op_set_event(req):
        ls, host_id, generation = (
            req["lockspace"].encode(),
            req["host_id"],
            req.get("generation", 0),
        )
        sanlock.set_event(ls, host_id, generation, req["event"],
                          data=req.get("data", 0), flags=req.get("flags", 0))  # fmt: skip

    def op_restrict(req):
        """python-sanlock has no restrict(): libsanlock's, on the registered fd."""
        import ctypes

        return ctypes.CDLL("libsanlock.so.1").sanlock_restrict(fd, req["flags"])

    def op_rindex(req):
        """python-sanlock 3.8 has no rindex calls: libsanlock's ``sanlock_<call>`` through
        ctypes. Returns the result and the sanlk_rentry as the library left it (copied from
        the reply only on success)."""
        import ctypes
        import struct

        lib = ctypes.CDLL("libsanlock.so.1", use_errno=True)
        rx = struct.pack(
            "IIQ48s1024sQII", req.get("rif", 0), req.get("max_resources", 0), 0,
            req["lockspace"].encode(), req["path"].encode(), req.get("offset", 0), 0, 0,
        )  # fmt: skip
        rx_buf = ctypes.create_string_buffer(rx, len(rx))
        fn, flags = getattr(lib, "sanlock_" + req["call"]), req.get("flags", 0)
        if req["call"] in ("format_rindex", "rebuild_rindex"):
            return {"rv": fn(rx_buf, flags)}
        entry = struct.pack("48sQII", req.get("name", "").encode(), req.get("res_offset", 0), 0, 0)
        re_buf = ctypes.create_string_buffer(entry, len(entry))
        if req["call"] == "create_resource":
            rv = fn(rx_buf, flags, re_buf, 0, req.get("num_hosts", 0))
        else:
            rv = fn(rx_buf, flags, re_buf)
        name, offset, _, _ = struct.unpack("48sQII", re_buf.raw[:64])
        return {"rv": rv, "name": name.rstrip(b"\0").decode(), "offset": offset}

    def op_bench(req):
        """Acquire/release ``count`` times; per-call latencies measured here, in the caller."""
        ls, res, d = req["lockspace"].encode(), req["resource"].encode(), disks(req)
        acq, rel = [], []
        for _ in range(req["count"]):
            t0 = time.perf_counter()
            sanlock.acquire(ls, res, d, slkfd=fd)
            t1 = time.perf_counter()
            sanlock.release(ls, res, d, slkfd=fd)
            t2 = time.perf_counter()
            acq.append(t1 - t0)
            rel.append(t2 - t1)
        return {"acquire": acq, "release": rel}

    ops = {k[3:]: v for k, v in locals().items() if k.startswith("op_")}
    for line in sys.stdin:
        req = json.loads(line)
        try:
            reply = {"result": ops[req["op"]](req)}
        except sanlock.SanlockException as e:
            reply = {"error": e.errno, "msg": str(e)}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__" and sys.argv[1:] == ["client"]:
    _client_main()
