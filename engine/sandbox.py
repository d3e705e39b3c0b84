"""Run untrusted generated Python programs, one fresh process each, and say whether they passed.

Calibration jobs score thousands of model-written programs against their tests (MBPP
asserts, HumanEval ``check(candidate)``). A program *passed* only if it ran to its last line:
no uncaught exception, no ``sys.exit``/``os._exit`` before the tests finished, within its
limits. Everything else is scored wrong, with one of the reasons in ``REASONS``.

Threat model: the code is written by a fallible model, not an attacker. The sandbox stops
accidents (loops, fork bombs, memory hogs, writes and deletes outside the program's
directory, network calls, huge output) from harming the host or the caller; where the
kernel allows, it adds layers that also hold against code that bypasses Python (``ctypes``).
Code that sets out to inspect the harness running it in the same interpreter could forge its
verdict; that is out of scope.

Each program runs in a fresh ``python -I -S -B`` (``sys.executable``; the standard library
only, no site-packages) with:

* its own session and process group (``start_new_session``), killed with ``SIGKILL`` when
  the run ends, however it ends;
* its own temporary directory as cwd, ``HOME`` and ``TMPDIR``, removed afterwards with
  everything the program wrote; a minimal environment (no inherited variables or secrets);
  stdin at ``/dev/null``; stdout and stderr read through pipes with a size cap;
* ``setrlimit``: ``RLIMIT_CPU`` (≈ the timeout), ``RLIMIT_AS`` (``memory_mb``),
  ``RLIMIT_FSIZE`` (``max_file_mb``), ``RLIMIT_NPROC`` (``max_processes``, with an own uid),
  ``RLIMIT_CORE`` 0; ``PR_SET_NO_NEW_PRIVS``; a wall-clock timeout enforced by the parent,
  counted from the program's start (once the interpreter and the sandbox are set up);
* a guard installed before the program runs (human-eval's ``reliability_guard``, kept
  narrow so ordinary solutions work): process creation (``os.fork``/``system``/``exec*``/
  ``spawn*``/``posix_spawn``, ``subprocess``, ``multiprocessing``), ``os.kill``, new sockets
  and name lookups, and ``resource.setrlimit`` raise ``PermissionError``; any such attempt makes
  the verdict ``"forbidden"`` even if the program catches the error;
* a sentinel: the runner reports the outcome on a private pipe, tagged with a random token
  the program never sees; no report (``os._exit``, a crash) is never a pass.

Kernel layers, detected once per process by running a probe program (``isolation()``):

* ``network="namespace"``: a new, empty network namespace (``unshare(CLONE_NEWNET)``, via
  ``ctypes``; needs ``CAP_SYS_ADMIN``): no interface but a down loopback, so nothing is
  reachable even through ``ctypes``. Otherwise ``"guard"``: the socket guard only.
* ``filesystem="readonly_mounts"``: a new mount namespace where every mount is read-only
  (``mount_setattr``, Linux >= 5.12) except the program's directory. Otherwise ``"guard"``:
  ``open``/``os.open`` for writing and the ``os`` calls that create, delete, rename or
  chmod refuse paths outside the program's directory (a Python-level check).
* ``user="own_uid"``: the program runs as an unprivileged uid of its own (``2**30 +
  256 * pid + n``, never shared by two live runs), so ``RLIMIT_NPROC`` is enforced (it is
  not for root), root's files are protected by permissions, and processes left behind are
  found by uid and killed. The interpreter's directory stays visible (an empty ``tmpfs`` hides
  any ancestor others cannot search, e.g. ``/root``, and the directory is bound back).
  Otherwise ``"inherited"``: the caller's uid; the guard stops process creation, and a
  process forked through ``ctypes`` that leaves the group (``setsid``) would not be found.

Here (root in a Firecracker VM) all three kernel layers hold. Without privileges (not root,
or a container without ``CAP_SYS_ADMIN``) the sandbox falls back to the guards and says so.

Reads are allowed: a solution may read any file the program's uid may read (e.g.
``/etc/passwd``); the environment carries no secrets, and with ``own_uid`` root-only files
(``/etc/shadow``, ``/root``) are out of reach.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import math
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable

SANDBOX_VERSION = "1"
"""Bumped whenever a verdict could change for the same program (verdict caches key on it)."""

REASONS = {
    "passed": "ran to its end: every test passed",
    "failed": "an uncaught exception (a failed assert, an error) or a nonzero exit",
    "early_exit": "exited with status 0 before its end (sys.exit(0), os._exit(0)): the tests never finished",
    "syntax_error": "does not compile",
    "timeout": "exceeded its wall-clock or CPU time",
    "memory": "exceeded its memory limit (MemoryError)",
    "file_limit": "wrote a file larger than max_file_mb",
    "output_limit": "printed more than max_output_kb to stdout and stderr",
    "forbidden": "tried something the sandbox refuses (a process, a socket, a write outside its directory)",
    "killed_signal": "killed by a signal (a segfault, an abort)",
    "sandbox_error": "the sandbox itself could not run it",
}
"""Every ``ExecutionResult.reason``, with its meaning."""

_UID_BASE = 1 << 30
_UIDS_PER_PROCESS = 256
_CONCURRENT_RUNS = 64
_STDERR_TAIL = 2000
_STATUS_CAP = 1 << 16
_SETUP_TIMEOUT_S = 30.0


@dataclasses.dataclass(frozen=True)
class ExecutionResult:
    """The verdict on one program.

    Attributes
    ----------
    passed : bool
        True only when ``reason == "passed"``.
    reason : str
        One of ``REASONS``.
    exit_code : int or None
        The sandbox process's exit status (negative: killed by that signal, as in
        ``subprocess``); None if it never started.
    seconds : float
        Wall-clock time the program ran, from its start (as ``timeout_s`` counts) to its end;
        from the process's start if it never got that far.
    stderr_tail : str
        The last characters of its stderr (tracebacks name the failed line).
    """

    passed: bool
    reason: str
    exit_code: int | None
    seconds: float
    stderr_tail: str = ""


@dataclasses.dataclass(frozen=True)
class Isolation:
    """Which mechanism enforces each kind of isolation on this machine (see the module docstring).

    Attributes
    ----------
    network : str
        ``"namespace"`` or ``"guard"``.
    filesystem : str
        ``"readonly_mounts"`` or ``"guard"``.
    user : str
        ``"own_uid"`` or ``"inherited"``.
    """

    network: str
    filesystem: str
    user: str


@dataclasses.dataclass(frozen=True)
class _Limits:
    timeout_s: float = 10.0
    memory_mb: int = 512
    max_processes: int = 8
    max_file_mb: int = 16
    max_output_kb: int = 1024


# ----------------------------------------------------------------------------- public API


def run_program(source: str, *, timeout_s: float = 10.0, memory_mb: int = 512, max_processes: int = 8,
                max_file_mb: int = 16, max_output_kb: int = 1024) -> ExecutionResult:
    """Run one complete program in a fresh sandboxed process.

    Parameters
    ----------
    source : str
        The program (solution and tests). It passes if it runs to its end.
    timeout_s : float
        Wall-clock limit on the program, counted from when it starts (the interpreter and the
        sandbox set up: on a loaded machine that alone can take seconds); ``RLIMIT_CPU`` is
        set just above it.
    memory_mb : int
        Address-space limit (``RLIMIT_AS``).
    max_processes : int
        ``RLIMIT_NPROC`` of the run's own uid (``user="own_uid"``): its processes and threads.
        Without an own uid it is not set (it would count every process of the caller's user,
        and it does not bind root); the guard refuses process creation in every case.
    max_file_mb : int
        Largest file the program may write (``RLIMIT_FSIZE``).
    max_output_kb : int
        stdout and stderr together beyond this end the run with ``"output_limit"``.

    Returns
    -------
    ExecutionResult
        Never raises for anything the program does.
    """
    limits = _Limits(timeout_s, memory_mb, max_processes, max_file_mb, max_output_kb)
    return _execute(source, limits, isolation())


def run_programs(sources: Iterable[str], workers: int = 2, progress: bool = False,
                 **limits) -> list[ExecutionResult]:
    """Run several programs, ``workers`` at a time; results in the order of ``sources``.

    Parameters
    ----------
    sources : iterable of str
        Complete programs.
    workers : int
        Programs running at once (each is one process; a thread waits on each).
    progress : bool
        Print ``sandbox: i/n programs`` to stderr as they finish.
    **limits
        Keyword limits of ``run_program``.

    Returns
    -------
    list of ExecutionResult
        Shape (n,).
    """
    from concurrent.futures import ThreadPoolExecutor

    sources = list(sources)
    isolation()  # probe once, before the threads start
    results = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for result in pool.map(lambda source: run_program(source, **limits), sources):
            results.append(result)
            if progress and (len(results) == len(sources) or len(results) % max(1, len(sources) // 20) == 0):
                print(f"sandbox: {len(results)}/{len(sources)} programs", file=sys.stderr, flush=True)
    return results


def check_solution(code: str, tests: str, setup: str = "", **limits) -> ExecutionResult:
    """Run ``setup + "\\n" + code + "\\n" + tests`` (e.g. MBPP's ``test_setup_code``, a reply's
    code, its asserts; or HumanEval's ``check`` plus ``check(entry_point)``).

    Parameters
    ----------
    code : str
        The solution (``extract_code`` of a reply).
    tests : str
        Statements that raise when the solution is wrong.
    setup : str
        Code run first (imports the tests and the signature assume).
    **limits
        Keyword limits of ``run_program``.

    Returns
    -------
    ExecutionResult
    """
    return run_program(setup + "\n" + code + "\n" + tests, **limits)


_FENCE_OPEN = re.compile(r"^\s*(`{3,})\s*([\w+#.-]*)")
_PYTHON_TAGS = {"", "python", "py", "python3", "py3"}
_DEFINES = re.compile(r"^\s*(async\s+def|def|class)\s+\w", re.MULTILINE)


def extract_code(reply: str) -> str:
    """The Python code of a model's reply.

    The first ```` ```python ```` (or ``py``, ``python3``, or untagged) fenced block that defines
    a function or class; else the longest such block; else the longest fenced block of any
    language; else the whole reply. The first defining block, not the last: models put the
    solution first and follow it with usage examples or tests, which would be run in its
    place (a model that revises its answer in a second block loses the revision, a rarer
    case). A final fence left open (a reply cut at ``max_tokens``) runs to the reply's end.

    Parameters
    ----------
    reply : str
        The model's text.

    Returns
    -------
    str
        Code, dedented.
    """
    blocks: list[tuple[str, str]] = []
    fence, lang, lines = "", None, []
    for line in reply.splitlines():
        if lang is None:
            match = _FENCE_OPEN.match(line)
            if match:
                fence, lang, lines = match.group(1), match.group(2).lower(), []
        elif re.fullmatch(r"\s*`{3,}\s*", line) and len(line.strip()) >= len(fence):
            blocks.append((lang, _dedent(lines)))
            lang = None
        elif line.rstrip().endswith(fence):  # "    return x```"
            lines.append(line.rstrip()[: -len(fence)])
            blocks.append((lang, _dedent(lines)))
            lang = None
        else:
            lines.append(line)
    if lang is not None:
        blocks.append((lang, _dedent(lines)))
    python = [code for tag, code in blocks if tag in _PYTHON_TAGS and code.strip()]
    defining = [code for code in python if _DEFINES.search(code)]
    if defining:
        return defining[0]
    if python:
        return max(python, key=len)
    if any(code.strip() for _, code in blocks):
        return max((code for _, code in blocks), key=len)
    return reply


def _dedent(lines: list[str]) -> str:
    import textwrap

    return textwrap.dedent("\n".join(lines)).strip("\n") + "\n"


_isolation_lock = threading.Lock()
_isolation: list[Isolation] = []


def isolation() -> Isolation:
    """The isolation this machine allows, probed once per process (a trivial program is run
    under each candidate, strongest first, and the first that works is kept).

    Returns
    -------
    Isolation
    """
    with _isolation_lock:
        if not _isolation:
            _isolation.append(_probe())
        return _isolation[0]


def network_isolation() -> str:
    """``"namespace"`` (a new network namespace) or ``"guard"`` (the in-process socket guard)."""
    return isolation().network


# ----------------------------------------------------------------------------- parent side

_PROBE = "import collections, decimal, json, math, re, tempfile\nopen('probe', 'w').write('ok')\n" \
         "tempfile.TemporaryFile().close()\nassert decimal.Decimal('0.1') * 3 == decimal.Decimal('0.3')\n"


def _probe() -> Isolation:
    candidates = [(True, True), (True, False), (False, True), (False, False)]
    if os.geteuid() != 0 or not sys.platform.startswith("linux"):
        candidates = [(False, False)]
    for namespaces, own_uid in candidates:
        chosen = Isolation("namespace" if namespaces else "guard", "readonly_mounts" if namespaces else "guard",
                           "own_uid" if own_uid else "inherited")
        result = _execute(_PROBE, _Limits(timeout_s=60.0), chosen)
        if result.passed:
            return chosen
        _logger().info("sandbox: %s unavailable (%s): %s", chosen, result.reason, result.stderr_tail[-300:])
    _logger().error("sandbox: even the guard-only sandbox cannot run a program: %s", result.stderr_tail)
    return chosen


def _logger():
    import logging  # not at the top: the child imports this module too, and starts faster without

    return logging.getLogger(__name__)


_uids_busy: set[int] = set()
_uids_next = [0]
_uids_cv = threading.Condition()


@contextlib.contextmanager
def _uid_slot():
    """A uid no other live run of any process uses: 2**30 + 256 * pid + n, n turning over so that
    a run never inherits the previous run's not-yet-reaped zombies (they count in RLIMIT_NPROC)."""
    with _uids_cv:
        _uids_cv.wait_for(lambda: len(_uids_busy) < _CONCURRENT_RUNS)
        while _uids_next[0] % _UIDS_PER_PROCESS in _uids_busy:
            _uids_next[0] += 1
        n = _uids_next[0] % _UIDS_PER_PROCESS
        _uids_next[0] += 1
        _uids_busy.add(n)
    try:
        yield _UID_BASE + (os.getpid() % (1 << 22)) * _UIDS_PER_PROCESS + n
    finally:
        with _uids_cv:
            _uids_busy.discard(n)
            _uids_cv.notify()


_root_lock = threading.Lock()
_root_dir: list[str] = []


def _root() -> str:
    """This process's directory of run directories (mode 0711: runs cannot list each other)."""
    with _root_lock:
        if not _root_dir or not os.path.isdir(_root_dir[0]):
            _root_dir[:] = [tempfile.mkdtemp(prefix="vcascade-sandbox-")]
            os.chmod(_root_dir[0], 0o711)
            import atexit

            atexit.register(_remove_tree, _root_dir[0])
        return _root_dir[0]


@contextlib.contextmanager
def _workdir(uid: int | None):
    path = tempfile.mkdtemp(prefix="run-", dir=_root())
    try:
        if uid is not None:
            os.chown(path, uid, uid)
        yield path
    finally:
        _remove_tree(path)


def _remove_tree(path: str) -> None:
    def make_writable(func, target, exc):  # inside the tree, a directory the program made unwritable
        exc = exc[1] if isinstance(exc, tuple) else exc  # onerror passes exc_info, onexc the exception
        if target == path or not isinstance(exc, PermissionError):
            raise exc
        os.chmod(os.path.dirname(target), 0o700)
        func(target)

    try:
        shutil.rmtree(path, **{"onexc" if sys.version_info >= (3, 12) else "onerror": make_writable})
    except FileNotFoundError:
        return
    except OSError as exc:
        _logger().warning("sandbox: could not remove %s: %s", path, exc)


def _execute(source: str, limits: _Limits, iso: Isolation) -> ExecutionResult:
    namespaces, own_uid = iso.filesystem == "readonly_mounts", iso.user == "own_uid"
    with _uid_slot() as uid, _workdir(uid if own_uid else None) as workdir:
        token = os.urandom(16).hex()
        status_r, status_w = os.pipe()
        config = {"source": source, "token": token, "status_fd": status_w, "workdir": workdir,
                  "uid": uid if own_uid else None, "namespaces": namespaces,
                  "expose": sorted({sys.base_prefix, sys.base_exec_prefix}) if own_uid else [],
                  "limits": dataclasses.asdict(limits)}
        env = {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8",
               "LC_ALL": "C.UTF-8", "OMP_NUM_THREADS": "1"}
        start = time.monotonic()
        try:
            proc = subprocess.Popen([sys.executable, "-I", "-S", "-B", os.path.abspath(__file__)],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    cwd=workdir, env=env, start_new_session=True, pass_fds=(status_w,))
        except OSError as exc:
            os.close(status_r)
            return ExecutionResult(False, "sandbox_error", None, 0.0, f"could not start: {exc}")
        finally:
            os.close(status_w)

        def clean_up() -> bool:  # kill what is left of the run; True when nothing survived
            return _kill_run(proc.pid, uid if own_uid else None)

        with proc, contextlib.closing(os.fdopen(status_r, "rb", buffering=0)) as status_pipe:
            try:
                seen = _watch(proc, status_pipe.fileno(), json.dumps(config).encode(), f"{token} started\n".encode(),
                              limits.timeout_s, limits.max_output_kb * 1024, clean_up)
            finally:
                survivors = not clean_up()
                proc.wait()
        seconds = time.monotonic() - (seen.started or start)
    return _verdict(seen, token, proc.returncode, seconds, survivors)


@dataclasses.dataclass
class _Seen:
    status: bytes = b""
    stderr: bytes = b""
    output_bytes: int = 0
    started: float | None = None  # when the program began (the sandbox set up), time.monotonic()
    timed_out: bool = False
    output_limited: bool = False


def _watch(proc: subprocess.Popen, status_fd: int, payload: bytes, started: bytes, timeout_s: float,
           output_cap: int, clean_up) -> _Seen:
    """Feed the config to stdin and read stdout, stderr and the status pipe until they close (once
    the process has exited, ``clean_up`` kills what it left holding them, with a short grace for
    the last bytes), the deadline passes, or the output exceeds its cap. The deadline is
    ``timeout_s`` after the ``started`` line (a loaded machine can take seconds to start an
    interpreter; that is not the program's time), and ``_SETUP_TIMEOUT_S`` before it."""
    seen = _Seen()
    deadline = time.monotonic() + _SETUP_TIMEOUT_S
    sel = selectors.DefaultSelector()
    os.set_blocking(proc.stdin.fileno(), False)
    sel.register(proc.stdin.fileno(), selectors.EVENT_WRITE, "stdin")
    for fd, name in ((proc.stdout.fileno(), "stdout"), (proc.stderr.fileno(), "stderr"), (status_fd, "status")):
        sel.register(fd, selectors.EVENT_READ, name)
    pidfd = None
    with contextlib.suppress(AttributeError, OSError):  # Linux >= 5.3; else the exit is noticed by polling
        pidfd = os.pidfd_open(proc.pid)
        sel.register(pidfd, selectors.EVENT_READ, "exit")  # readable once the process has exited
    exited = False
    try:
        while any(key.data in ("stdout", "stderr", "status") for key in sel.get_map().values()):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                seen.timed_out = not exited
                break
            for key, _ in sel.select(min(remaining, 0.2)):
                if key.data == "exit":
                    sel.unregister(key.fd)
                elif key.data == "stdin":
                    try:
                        payload = payload[os.write(key.fd, payload[:1 << 16]):]
                    except BrokenPipeError:
                        payload = b""
                    if not payload:
                        sel.unregister(key.fd)
                        proc.stdin.close()
                else:
                    data = os.read(key.fd, 1 << 16)
                    if not data:
                        sel.unregister(key.fd)
                    elif key.data == "status":
                        seen.status = (seen.status + data)[:_STATUS_CAP]
                        if seen.started is None and started in seen.status:
                            seen.started = time.monotonic()
                            deadline = seen.started + timeout_s
                    else:
                        seen.output_bytes += len(data)
                        if key.data == "stderr":
                            seen.stderr = (seen.stderr + data)[-4 * _STDERR_TAIL:]
            if seen.output_bytes > output_cap:
                seen.output_limited = True
                break
            if not exited and os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                exited = True  # not reaped yet: its pid, and so its group, cannot be reused
                clean_up()
                deadline = min(deadline, time.monotonic() + 0.5)
    finally:
        sel.close()
        if pidfd is not None:
            os.close(pidfd)
    return seen


def _kill_run(pgid: int, uid: int | None) -> bool:
    """SIGKILL the run's process group and, with an own uid, every process of that uid (one
    that left the group); True once no live process of either is left. Called before the
    sandbox process is reaped, so its pid, and so the group's id, cannot have been reused."""
    for _ in range(200):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        pids = _members(pgid, uid)
        if not pids:
            return True
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.005)
    return False


def _members(pgid: int, uid: int | None) -> list[int]:
    """Live (not zombie) processes in process group ``pgid`` or owned by ``uid``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            owner = os.stat(f"/proc/{entry}").st_uid
            with open(f"/proc/{entry}/stat", "rb") as fh:
                state, _ppid, group = fh.read().rsplit(b")", 1)[1].split()[:3]
        except (OSError, ValueError):  # exited meanwhile
            continue
        if state not in (b"Z", b"X") and (int(group) == pgid or owner == uid):
            found.append(int(entry))
    return found


def _verdict(seen: _Seen, token: str, returncode: int, seconds: float, survivors: bool) -> ExecutionResult:
    tail = seen.stderr.decode("utf-8", errors="replace")[-_STDERR_TAIL:]
    reported = None
    for line in seen.status.decode("ascii", errors="replace").splitlines():
        if line.startswith(token + " ") and line != token + " started":
            reported = line[len(token) + 1:]
    if seen.output_limited:
        reason = "output_limit"
    elif survivors or seen.started is None and seen.timed_out:
        reason = "sandbox_error"
        problem = "processes of the run survived SIGKILL" if survivors else f"no start in {_SETUP_TIMEOUT_S} s"
        tail = (tail + f"\nsandbox: {problem}")[-_STDERR_TAIL:]
    elif reported is not None:
        reason = reported if reported in REASONS else "sandbox_error"
    elif seen.timed_out or returncode == -signal.SIGXCPU:
        reason = "timeout"
    elif returncode < 0:
        reason = "killed_signal"
    elif returncode == 0:
        reason = "early_exit"
    else:
        reason = "failed"
    return ExecutionResult(reason == "passed", reason, returncode, seconds, tail)


# ----------------------------------------------------------------------------- child side
# Runs as ``python -I -S -B sandbox.py`` with the config on stdin; root until _confine drops it.

_CLONE_NEWNS, _CLONE_NEWNET = 0x00020000, 0x40000000
_MS_BIND, _MS_REC, _MS_PRIVATE, _MS_NOSUID, _MS_NODEV = 0x1000, 0x4000, 1 << 18, 0x2, 0x4
_MOUNT_ATTR_RDONLY, _AT_RECURSIVE, _AT_FDCWD = 0x1, 0x8000, -100
_SYS_MOUNT_SETATTR = 442  # the same number on x86_64 and arm64
_PR_SET_NO_NEW_PRIVS = 38
_PROCESS_CALLS = ("fork", "forkpty", "system", "popen", "execv", "execve", "execl", "execle", "execlp",
                  "execlpe", "execvp", "execvpe", "spawnl", "spawnle", "spawnlp", "spawnlpe", "spawnv",
                  "spawnve", "spawnvp", "spawnvpe", "posix_spawn", "posix_spawnp", "kill", "killpg")
_SOCKET_CALLS = ("create_connection", "create_server", "getaddrinfo",
                 "gethostbyname", "gethostbyname_ex", "gethostbyaddr", "getnameinfo")
# os calls that change the filesystem: (argument index, its dir_fd keyword) of each path they change
_FILE_CALLS = {"remove": ((0, "dir_fd"),), "unlink": ((0, "dir_fd"),), "rmdir": ((0, "dir_fd"),),
               "mkdir": ((0, "dir_fd"),), "mkfifo": ((0, "dir_fd"),), "mknod": ((0, "dir_fd"),),
               "rename": ((0, "src_dir_fd"), (1, "dst_dir_fd")), "replace": ((0, "src_dir_fd"), (1, "dst_dir_fd")),
               "link": ((1, "dst_dir_fd"),), "symlink": ((1, "dir_fd"),), "chmod": ((0, "dir_fd"),),
               "chown": ((0, "dir_fd"),), "lchown": ((0, None),), "truncate": ((0, None),),
               "utime": ((0, "dir_fd"),), "chroot": ((0, None),)}
_violations: list[str] = []


class _Forbidden(PermissionError):
    """Raised by the guard."""


def _forbid(name: str):
    def forbidden(*args, **kwargs):
        _violations.append(name)
        raise _Forbidden(errno.EPERM, f"{name} is not allowed in the sandbox")

    return forbidden


def _bootstrap() -> None:
    write, exit_now = os.write, os._exit
    config = json.loads(sys.stdin.buffer.read())
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.close(null)
    token, status_fd = config.pop("token"), config["status_fd"]

    def report(reason: str) -> None:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(AttributeError, OSError, ValueError):  # replaced or closed by the program
                stream.flush()
        with contextlib.suppress(OSError):  # the program closed the pipe: no report, never a pass
            write(status_fd, f"{token} {reason}\n".encode())
        exit_now(0 if reason == "passed" else 1)

    try:
        _confine(config)
    except Exception:  # any failure to confine is fatal: fail closed
        import traceback

        write(2, ("sandbox setup failed:\n" + traceback.format_exc()).encode(errors="replace"))
        report("sandbox_error")
    with contextlib.suppress(OSError):
        write(status_fd, f"{token} started\n".encode())  # the parent's clock for timeout_s starts
    report(_run(config["source"]))


def _confine(config: dict) -> None:
    import ctypes
    import resource

    libc = ctypes.CDLL(None, use_errno=True)

    def check(rc: int, what: str) -> None:
        if rc != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"{what}: {os.strerror(code)}")

    workdir, uid, limits = config["workdir"], config["uid"], config["limits"]
    if config["namespaces"]:
        _namespaces(libc, check, os.fsencode(workdir), config["expose"])
    check(libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "PR_SET_NO_NEW_PRIVS")
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    os.chdir(workdir)
    cpu = math.ceil(limits["timeout_s"]) + 1
    rlimits = [(resource.RLIMIT_CPU, cpu, cpu + 1), (resource.RLIMIT_AS, limits["memory_mb"] << 20, None),
               (resource.RLIMIT_FSIZE, limits["max_file_mb"] << 20, None), (resource.RLIMIT_CORE, 0, None)]
    if uid is not None:  # it counts every process of the uid: only the run's own uid is the run's alone
        rlimits.append((resource.RLIMIT_NPROC, limits["max_processes"], None))
    for res, soft, hard in rlimits:
        hard = soft if hard is None else hard
        current = resource.getrlimit(res)[1]
        if current != resource.RLIM_INFINITY:
            soft, hard = min(soft, current), min(hard, current)
        resource.setrlimit(res, (soft, hard))
    _guard(workdir, files=not config["namespaces"])


def _namespaces(libc, check, workdir: bytes, expose: list[str]) -> None:
    """New network and mount namespaces; every mount read-only but ``workdir``; ``expose``
    (the interpreter's directories) reachable by an unprivileged uid."""
    import ctypes

    class MountAttr(ctypes.Structure):
        _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                    ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]

    def mount_setattr(path: bytes, flags: int, attr: MountAttr, what: str) -> None:
        check(libc.syscall(ctypes.c_long(_SYS_MOUNT_SETATTR), ctypes.c_int(_AT_FDCWD), ctypes.c_char_p(path),
                           ctypes.c_uint(flags), ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr))), what)

    check(libc.unshare(_CLONE_NEWNS | _CLONE_NEWNET), "unshare(CLONE_NEWNS | CLONE_NEWNET)")
    # first, and checked: nothing mounted below may propagate back to the host
    check(libc.mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None), "make / private")
    check(libc.mount(workdir, workdir, None, _MS_BIND, None), "bind the workdir")
    hidden = {}
    for path in expose:  # the first ancestor others cannot search, e.g. /root
        parts = os.path.abspath(path).split(os.sep)[1:]
        for i in range(1, len(parts)):
            ancestor = os.sep + os.sep.join(parts[:i])
            if not os.stat(ancestor).st_mode & 0o001:
                hidden[path] = (ancestor, os.open(path, os.O_PATH | os.O_DIRECTORY))
                break
    for ancestor in sorted({a for a, _ in hidden.values()}):
        check(libc.mount(b"tmpfs", os.fsencode(ancestor), b"tmpfs", _MS_NOSUID | _MS_NODEV, b"mode=755,size=64k"),
              f"hide {ancestor}")
    for path, (_, fd) in hidden.items():
        os.makedirs(path, mode=0o755, exist_ok=True)
        check(libc.mount(f"/proc/self/fd/{fd}".encode(), os.fsencode(path), None, _MS_BIND | _MS_REC, None),
              f"bind {path}")
        os.close(fd)
    mount_setattr(b"/", _AT_RECURSIVE, MountAttr(attr_set=_MOUNT_ATTR_RDONLY), "make every mount read-only")
    mount_setattr(workdir, 0, MountAttr(attr_clr=_MOUNT_ATTR_RDONLY), "make the workdir writable")


def _guard(workdir: str, files: bool) -> None:
    """Python-level refusals (module docstring); ``files``: also writes outside ``workdir``."""
    import _posixsubprocess
    import _socket
    import posix
    import resource
    import socket

    for module in (os, posix):
        for name in _PROCESS_CALLS:
            if hasattr(module, name):
                setattr(module, name, _forbid(f"os.{name}"))
    # subprocess keeps its own reference; multiprocessing's spawn and forkserver use the module's
    _posixsubprocess.fork_exec = subprocess._fork_exec = _forbid("subprocess")
    resource.setrlimit = resource.prlimit = _forbid("resource.setrlimit")
    if hasattr(signal, "pidfd_send_signal"):
        signal.pidfd_send_signal = _forbid("signal.pidfd_send_signal")

    # a new socket is refused; wrapping an existing descriptor is not (socketpair, which
    # asyncio's event loop needs, makes a connected AF_UNIX pair that reaches nothing)
    def refusing(base: type) -> type:  # socket.socket.__init__ calls _socket.socket.__init__ by name
        def __init__(self, family=-1, type=-1, proto=-1, fileno=None):
            if fileno is None:
                _forbid("socket")()
            base.__init__(self, family, type, proto, fileno)

        return type(base.__name__, (base,), {"__init__": __init__, "__module__": base.__module__})

    NoSocket, NoRawSocket = refusing(socket.socket), refusing(_socket.socket)

    socket.socket, socket.SocketType = NoSocket, NoRawSocket
    _socket.socket = _socket.SocketType = NoRawSocket
    for module in (socket, _socket):
        for name in _SOCKET_CALLS:
            if hasattr(module, name):
                setattr(module, name, _forbid(f"socket.{name}"))
    if files:
        _guard_files(workdir)


def _guard_files(workdir: str) -> None:
    import builtins
    import io

    realpath, readlink, real_open, real_os_open = os.path.realpath, os.readlink, builtins.open, os.open
    writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def inside(path, dir_fd) -> bool:
        if isinstance(path, int):
            path = readlink(f"/proc/self/fd/{path}")
        path = os.fsdecode(path)
        if dir_fd is not None and not os.path.isabs(path):
            path = os.path.join(readlink(f"/proc/self/fd/{dir_fd}"), path)
        real = realpath(path)
        return real == workdir or real.startswith(workdir + os.sep) or real == os.devnull

    def guarded_open(file, mode="r", *args, **kwargs):
        if not isinstance(file, int) and set(mode) & set("wax+") and not inside(file, None):
            _forbid(f"open({file!r}, {mode!r})")()
        return real_open(file, mode, *args, **kwargs)

    def guarded_os_open(path, flags, *args, dir_fd=None, **kwargs):
        if flags & writing and not inside(path, dir_fd):
            _forbid(f"os.open({path!r})")()
        return real_os_open(path, flags, *args, dir_fd=dir_fd, **kwargs)

    def confined(name, func, paths):
        def call(*args, **kwargs):
            for index, fd_keyword in paths:
                if index < len(args) and not inside(args[index], kwargs.get(fd_keyword) if fd_keyword else None):
                    _forbid(f"os.{name}({args[index]!r})")()
            return func(*args, **kwargs)

        return call

    builtins.open = io.open = guarded_open
    os.open = guarded_os_open
    for name, paths in _FILE_CALLS.items():
        if hasattr(os, name):
            setattr(os, name, confined(name, getattr(os, name), paths))


def _run(source: str) -> str:
    """Compile and run ``source`` as ``__main__``; the reason it ended."""
    import builtins
    import linecache
    import traceback
    import types

    def tell(text: str) -> None:
        with contextlib.suppress(OSError):
            os.write(2, text.encode(errors="replace"))

    def trace(exc: BaseException) -> str:  # without this frame: the program's own traceback
        tb = exc.__traceback__.tb_next if exc.__traceback__ else None
        return "".join(traceback.format_exception(type(exc), exc, tb))

    try:
        code = compile(source, "<program>", "exec", dont_inherit=True)
    except (SyntaxError, ValueError) as exc:  # ValueError: a null byte
        tell("".join(traceback.format_exception_only(type(exc), exc)))
        return "syntax_error"
    linecache.cache["<program>"] = (len(source), None, source.splitlines(True), "<program>")
    main = types.ModuleType("__main__")
    main.__builtins__ = builtins
    sys.modules["__main__"], sys.argv = main, ["<program>"]
    try:
        exec(code, main.__dict__)
        reason = "passed"
    except SystemExit as exc:
        tell(f"SystemExit: {exc.code!r}\n")
        reason = "early_exit" if exc.code in (None, 0) else "failed"
    except MemoryError as exc:
        main.__dict__.clear()  # free what it held before formatting the traceback
        tell(trace(exc))
        reason = "memory"
    except BaseException as exc:  # the program's own failure, whatever it raised
        tell(trace(exc))
        if isinstance(exc, OSError) and exc.errno == errno.EFBIG:
            reason = "file_limit"
        elif isinstance(exc, OSError) and exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            reason = "forbidden"
        else:
            reason = "failed"
    if _violations:
        tell(f"sandbox: refused {', '.join(dict.fromkeys(_violations))}\n")
        return "forbidden"
    return reason


if __name__ == "__main__":
    _bootstrap()
