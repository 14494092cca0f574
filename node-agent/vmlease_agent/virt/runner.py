"""The hook's fork/deadline runner: work that may block in the kernel, kept off libvirt's back.

libvirt waits for its hook to exit while holding the domain's job lock, so a hook stuck on a dead
NFS mount hangs libvirtd. :func:`run` therefore does the work in a forked worker whose
stdin/stdout/stderr are not libvirt's pipes, and the process libvirt waits for only watches a
pipe until the deadline: the worker reports each stage it enters (``stage:TEXT``) and then its
verdict (``ok:MESSAGE`` or ``error:MESSAGE``), one line each. At the deadline the worker is
abandoned (SIGKILL; a worker stuck in uninterruptible I/O dies when the I/O returns) and the
verdict is a refusal naming the last stage reported. The worker leaves with ``os._exit``: it
shares the parent's memory image and must not run the parent's teardown.

Knows nothing of libvirt or the agent: ``virt.hook`` decides what the work is and what its
messages say. Imported only by the ops that fork (``prepare``, ``reconnect``); like the hook it
imports only C modules.
"""

import os
import select
import time

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs an import the hook avoids at run time
    from collections.abc import Callable

    #: the worker's ``report(text)``: tells the waiting parent which stage the work is in
    Report = Callable[[str], None]

#: Seconds the parent waits for its worker to exit after the verdict (it exits at once).
REAP_GRACE = 1.0


def one_line(text: str) -> str:
    """``text`` with its whitespace runs (newlines included) collapsed to single spaces: each
    message crosses the pipe, and reaches libvirt's error, as one line."""
    return " ".join(text.split())


def run(
    work: "Callable[[Report], tuple[bool, str]]",
    deadline: float,
    timed_out: "Callable[[str], str]",
) -> tuple[bool, str]:
    """``work(report)`` in a forked worker until ``deadline`` (``time.monotonic``): its
    (succeeded, message), or (False, ``timed_out(last stage)``) when it did not finish in time.

    ``work`` must not raise: it turns its own failures into (False, message). Should it raise
    anyway, the verdict is a refusal naming the exception, never a pass.
    """
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the worker: nothing of libvirt's may stay open here (see module docstring)
        code = 1
        try:
            os.close(r)
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            code = _worker(work, w)
        finally:
            os._exit(code)
    os.close(w)
    buf, stage = b"", "starting"
    final = None
    while final is None:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([r], [], [], left)[0]:
            break
        data = os.read(r, 65536)
        if not data:
            break  # the worker exited without a verdict (killed?)
        buf += data
        for line in buf.decode(errors="replace").splitlines():
            if line.startswith("stage:"):
                stage = line[6:]
            elif line.startswith(("ok:", "error:")):
                final = line
    os.close(r)
    # the verdict is in; the worker exits at once unless an abandoned I/O thread of its own is
    # stuck in the kernel, which must not keep libvirt waiting
    if _reap(pid, min(deadline, time.monotonic() + REAP_GRACE)) is None:
        import signal

        try:  # noqa: SIM105 - contextlib costs the hook milliseconds per call
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if final is None:
        return False, timed_out(stage)
    return final.startswith("ok:"), final.split(":", 1)[1]


def _worker(work: "Callable[[Report], tuple[bool, str]]", out: int) -> int:
    """Runs in the forked child: the stages, then one ``ok:`` or ``error:`` line on ``out``;
    returns the exit status."""

    def report(text: str) -> None:
        os.write(out, f"stage:{one_line(text)}\n".encode())

    try:
        ok, message = work(report)
    except BaseException as e:  # a bug must refuse the start, not let it through
        ok, message = False, f"the vmlease hook failed: {type(e).__name__}: {e}"
    os.write(out, f"{'ok' if ok else 'error'}:{one_line(message)}\n".encode())
    return 0 if ok else 1


def _reap(pid: int, deadline: float) -> int | None:
    """The worker's exit status, polling (never blocking) until the deadline."""
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.002)
