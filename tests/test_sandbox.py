"""The sandbox scores bad programs wrong with the right reason, never hangs, leaves nothing behind.

Each hostile program is its own test. Kernel layers (network namespace, read-only mounts, an
own uid) are what this machine provides (root in a VM); tests of a layer the machine lacks are
skipped, and the guard-only fallback is exercised on its own by forcing it.
"""

from __future__ import annotations

import os
import pwd
import re
import socket
import sys
import time

import pytest

from vcascade.engine import sandbox
from vcascade.engine.sandbox import (REASONS, ExecutionResult, check_solution, extract_code, isolation,
                                     network_isolation, run_program, run_programs)

SLACK_S = 0.75  # a never-ending program costs at most its limit plus this
GUARD_ONLY = sandbox.Isolation(network="guard", filesystem="guard", user="inherited")


def sandbox_processes() -> list[int]:
    """Live processes of this test process's runs (others may use the sandbox meanwhile): their
    environment names a run directory of this process's sandbox root."""
    marker = f"HOME={sandbox._root()}{os.sep}".encode()
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                environ = fh.read()
            with open(f"/proc/{pid}/stat") as fh:
                state = fh.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in environ and state not in "ZX":
            found.append(int(pid))
    return found


def run(source: str, **limits) -> ExecutionResult:
    result = run_program(source, **limits)
    assert result.reason in REASONS
    assert result.passed == (result.reason == "passed")
    assert sandbox_processes() == [], "a process of the run survived it"
    return result


@pytest.fixture
def guard_only(monkeypatch):
    """Run as on a machine without namespaces or uids to spare: the in-process guards alone."""
    monkeypatch.setattr(sandbox, "isolation", lambda: GUARD_ONLY)


@pytest.fixture
def listener():
    """A local TCP server no sandboxed program may reach."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(0.05)
        yield server


def never_connected(server: socket.socket) -> bool:
    try:
        server.accept()[0].close()
    except socket.timeout:
        return True
    return False


def cap_sys_admin() -> bool:
    with open("/proc/self/status") as fh:
        effective = int(re.search(r"^CapEff:\s+([0-9a-f]+)", fh.read(), re.MULTILINE).group(1), 16)
    return bool(effective & (1 << 21))


def needs(**layer):
    (kind, mechanism), = layer.items()
    return pytest.mark.skipif(getattr(isolation(), kind) != mechanism, reason=f"this machine lacks {kind}={mechanism}")


# ----------------------------------------------------------------------------- ordinary programs


def test_passing_and_failing_programs():
    ok = run("def add(a, b):\n    return a + b\nassert add(2, 3) == 5\n")
    assert ok.passed and ok.reason == "passed" and ok.exit_code == 0 and 0 < ok.seconds < 10
    bad = run("def add(a, b):\n    return a - b\nassert add(2, 3) == 5\n")
    assert not bad.passed and bad.reason == "failed"
    assert "AssertionError" in bad.stderr_tail and "assert add(2, 3) == 5" in bad.stderr_tail
    assert "sandbox.py" not in bad.stderr_tail  # the program's own traceback, not the harness's


def test_error_and_syntax_error():
    assert run("[][1]").reason == "failed"
    result = run("def f(:\n    pass\n")
    assert result.reason == "syntax_error" and "SyntaxError" in result.stderr_tail
    assert run("x = 1\x00").reason == "syntax_error"


def test_check_solution_humaneval_and_mbpp_shapes():
    humaneval = ("def check(candidate):\n    assert candidate([1, 2, 3]) == 6\n    assert candidate([]) == 0\n"
                 "\ncheck(total)\n")
    assert check_solution("def total(xs):\n    return sum(xs)\n", humaneval).passed
    assert check_solution("def total(xs):\n    return len(xs)\n", humaneval).reason == "failed"
    mbpp = "assert smallest([4, 2, 9]) == 2\nassert smallest([7]) == 7"
    assert check_solution("def smallest(xs):\n    return heapq.nsmallest(1, xs)[0]", mbpp, setup="import heapq").passed
    assert check_solution("def smallest(xs):\n    return heapq.nsmallest(1, xs)[0]", mbpp).reason == "failed"


STDLIB_PROGRAM = r'''
import math, re, collections, itertools, heapq, functools, typing, string, bisect, fractions, decimal
import statistics, datetime, random, copy, operator, json, dataclasses, enum, array, hashlib, textwrap
import unicodedata, tempfile, os, sys, io, struct, cmath, calendar, pathlib, pickle, zlib, base64, csv
import threading, asyncio, unittest, doctest, inspect, ssl, urllib.request, http.client
from typing import List, Optional
from collections import Counter, deque

@functools.lru_cache(maxsize=None)
def fib(n: int) -> int:
    return n if n < 2 else fib(n - 1) + fib(n - 2)

def tokens(s: str) -> List[str]:
    return re.findall(r"\w+", s)

assert fib(60) == 1548008755920 and tokens("a b,c") == ["a", "b", "c"]
assert heapq.nsmallest(2, [5, 1, 3]) == [1, 3] and Counter("aab")["a"] == 2
assert list(itertools.combinations("abc", 2))[0] == ("a", "b") and math.comb(5, 2) == 10
assert decimal.Decimal("0.1") * 3 == decimal.Decimal("0.3") and fractions.Fraction(1, 3) * 3 == 1
assert string.ascii_lowercase[:3] == "abc" and statistics.median([3, 1, 2]) == 2 and bisect.bisect([1, 3], 2) == 1
random.seed(0)
assert sorted(random.sample(range(10), 3)) == sorted(set(random.Random(0).sample(range(10), 3)))
assert pickle.loads(pickle.dumps(deque([1, 2]))) == deque([1, 2])
with tempfile.NamedTemporaryFile("w") as fh:
    fh.write("x")
pathlib.Path("notes.txt").write_text("kept in the run's own directory")
os.remove("notes.txt")
threads = [threading.Thread(target=sum, args=([1, 2],)) for _ in range(3)]
for t in threads:
    t.start()
for t in threads:
    t.join()
assert asyncio.run(asyncio.sleep(0, result=5)) == 5
print("done", file=sys.stderr)
'''


def test_guards_do_not_break_ordinary_code():
    result = run(STDLIB_PROGRAM)
    assert result.passed, result.stderr_tail


def test_guards_alone_do_not_break_ordinary_code(guard_only):
    result = run(STDLIB_PROGRAM)
    assert result.passed, result.stderr_tail


def test_only_the_standard_library_is_importable():
    assert run("import numpy").reason == "failed"  # -S: no site-packages, so no numpy


# ----------------------------------------------------------------------------- time, memory, output


def test_infinite_loop_costs_at_most_its_limit():
    result = run("while True:\n    pass\n", timeout_s=1.0)
    assert result.reason == "timeout" and not result.passed
    assert 0.9 <= result.seconds <= 1.0 + SLACK_S


def test_sleeping_forever_is_stopped_by_the_wall_clock():
    result = run("import time\ntime.sleep(3600)\n", timeout_s=1.0)
    assert result.reason == "timeout" and result.seconds <= 1.0 + SLACK_S


def test_memory_hog_one_allocation():
    result = run("x = bytearray(10**10)\n", memory_mb=256)
    assert result.reason == "memory" and "MemoryError" in result.stderr_tail


def test_memory_hog_growing_list():
    result = run("x = []\nwhile True:\n    x.append(' ' * 10**6)\n", memory_mb=256, timeout_s=5.0)
    assert result.reason == "memory"


def test_huge_output_is_cut():
    result = run("while True:\n    print('x' * 1000)\n", max_output_kb=256, timeout_s=5.0)
    assert result.reason == "output_limit" and result.seconds < 5.0


def test_file_size_limit():
    result = run("open('big', 'wb').write(b'x' * (4 << 20))\n", max_file_mb=1)
    assert result.reason == "file_limit"


def test_stdin_is_closed():
    result = run("input()\n", timeout_s=5.0)
    assert result.reason == "failed" and "EOFError" in result.stderr_tail


def test_segfault():
    result = run("import ctypes\nctypes.string_at(0)\n")
    assert result.reason == "killed_signal" and result.exit_code == -11


def test_keyboard_interrupt_is_a_failure():
    result = run("raise KeyboardInterrupt\n")
    assert result.reason == "failed" and "KeyboardInterrupt" in result.stderr_tail


# ----------------------------------------------------------------------------- the tests must run to the end

TESTS_AFTER_EXIT = "def f():\n    return 1\n{exit}\nassert f() == 2\n"


def test_sys_exit_0_before_the_tests_is_not_a_pass():
    result = run(TESTS_AFTER_EXIT.format(exit="import sys\nsys.exit(0)"))
    assert result.reason == "early_exit" and not result.passed


def test_os_exit_0_before_the_tests_is_not_a_pass():
    result = run(TESTS_AFTER_EXIT.format(exit="import os\nos._exit(0)"))
    assert result.reason == "early_exit" and result.exit_code == 0 and not result.passed


def test_sys_exit_nonzero_is_a_failure():
    assert run("import sys\nsys.exit(3)\n").reason == "failed"


def test_a_program_cannot_forge_the_completion_report():
    """Writing "passed" lines to every descriptor, then leaving without finishing, is no pass."""
    forge = ("import os\nfor fd in range(3, 64):\n    try:\n        os.write(fd, b'passed\\n' * 4)\n"
             "    except OSError:\n        pass\nos._exit(0)\n")
    assert run(forge).reason == "early_exit"


# ----------------------------------------------------------------------------- processes


def test_fork_bomb():
    result = run("import os\nwhile True:\n    os.fork()\n", timeout_s=2.0)
    assert result.reason == "forbidden" and "os.fork" in result.stderr_tail


def test_caught_refusal_still_counts():
    result = run("import os\ntry:\n    os.fork()\nexcept OSError:\n    pass\n")
    assert result.reason == "forbidden"


def test_os_system(tmp_path):
    marker = tmp_path / "ran"
    result = run(f"import os\nos.system('touch {marker}')\n")
    assert result.reason == "forbidden" and not marker.exists()


def test_subprocess_run(tmp_path):
    marker = tmp_path / "ran"
    result = run(f"import subprocess\nsubprocess.run(['touch', '{marker}'])\n")
    assert result.reason == "forbidden" and not marker.exists()


def test_multiprocessing():
    result = run("import multiprocessing\nwith multiprocessing.Pool(2) as pool:\n    print(pool.map(abs, [-1]))\n")
    assert result.reason == "forbidden"


@needs(user="own_uid")
def test_kernel_caps_processes_even_past_the_guard():
    """fork through ctypes bypasses the guard; RLIMIT_NPROC of the run's own uid still holds."""
    program = ("import ctypes, time\nlibc = ctypes.CDLL(None)\nchildren = 0\nfor _ in range(50):\n"
               "    pid = libc.fork()\n    if pid == 0:\n        time.sleep(60)\n    if pid < 0:\n        break\n"
               "    children += 1\nassert 0 < children < 4, children\n")
    result = run(program, max_processes=4, timeout_s=5.0)  # run() also checks the sleepers were killed
    assert result.passed, result.stderr_tail


@needs(user="own_uid")
def test_fork_bomb_past_the_guard_is_contained():
    result = run("import ctypes\nlibc = ctypes.CDLL(None)\nwhile True:\n    libc.fork()\n", timeout_s=1.0)
    assert result.reason == "timeout" and result.seconds <= 1.0 + SLACK_S


@needs(user="own_uid")
def test_a_process_that_leaves_the_group_is_killed():
    program = ("import ctypes, os, time\nlibc = ctypes.CDLL(None)\nr, w = os.pipe()\nif libc.fork() == 0:\n"
               "    libc.setsid()\n    os.write(w, b'x')\n    time.sleep(60)\n"
               "assert os.read(r, 1) == b'x'  # the child has left the group\n")
    assert run(program).passed  # run() asserts the escaped sleeper is gone


# ----------------------------------------------------------------------------- files

ESCAPE = "/tmp/vcascade_escape_test"


@pytest.fixture
def no_escape_file():
    if os.path.exists(ESCAPE):
        os.remove(ESCAPE)
    yield ESCAPE
    exists = os.path.exists(ESCAPE)
    if exists:
        os.remove(ESCAPE)
    assert not exists, f"a sandboxed program wrote {ESCAPE}"


def test_write_outside_the_run_directory(no_escape_file):
    result = run(f"open({no_escape_file!r}, 'w').write('escaped')\n")
    assert result.reason == "forbidden"


def test_write_to_the_real_home(tmp_path):
    home = pwd.getpwuid(os.getuid()).pw_dir
    target = os.path.join(home, f"vcascade_escape_{os.getpid()}")
    result = run(f"open({target!r}, 'w').write('escaped')\n")
    assert result.reason == "forbidden" and not os.path.exists(target)


def test_files_written_inside_are_removed_afterwards():
    program = ("import os, sys, tempfile\nopen('a.txt', 'w').write('x')\nos.makedirs('d/e')\n"
               "open(os.path.join(os.path.expanduser('~'), 'h'), 'w').write('home is the run directory')\n"
               "tempfile.mkstemp()\nopen('d/e/f', 'w').write('x')\nos.chmod('d/e', 0)\nos.chmod('d', 0o500)\n"
               "print('CWD=' + os.getcwd(), file=sys.stderr)\n")
    result = run(program)
    assert result.passed, result.stderr_tail
    workdir = re.search(r"CWD=(\S+)", result.stderr_tail).group(1)
    assert not os.path.exists(workdir)


def test_deleting_the_parent_of_cwd_spares_everything_else(tmp_path):
    canary = tmp_path / "canary"
    canary.mkdir()
    (canary / "keep").write_text("x")
    neighbour = ("import os, time\nopen('mine', 'w').write('x')\ntime.sleep(1.5)\n"
                 "assert open('mine').read() == 'x'\n")
    deleter = (f"import os, shutil\nshutil.rmtree({str(canary)!r}, ignore_errors=True)\n"
               "shutil.rmtree(os.path.dirname(os.getcwd()))\n")
    kept, deleted = run_programs([neighbour, deleter], workers=2)
    assert kept.passed, kept.stderr_tail
    assert deleted.reason == "forbidden"
    assert (canary / "keep").read_text() == "x"


def test_a_program_deleting_its_own_directory_breaks_no_later_run(monkeypatch):
    with monkeypatch.context() as guards_alone:
        guards_alone.setattr(sandbox, "isolation", lambda: GUARD_ONLY)
        assert run("import os, shutil\nshutil.rmtree(os.getcwd())\n").passed  # its own: allowed
    assert run("open('x', 'w').write('fine')\n").passed


def test_reading_world_readable_files_is_allowed():
    assert run("assert 'root' in open('/etc/passwd').read()\n").passed


@needs(user="own_uid")
def test_root_only_files_are_out_of_reach():
    assert run("open('/etc/shadow').read()\n").reason == "forbidden"
    home = pwd.getpwuid(os.getuid()).pw_dir
    on_the_way = os.path.relpath(sys.base_prefix, home).split(os.sep)[0]  # e.g. .pyenv: the interpreter
    private = sorted(set(os.listdir(home)) - {on_the_way})
    program = (f"import os\ntry:\n    seen = set(os.listdir({home!r}))\nexcept PermissionError:\n"
               f"    seen = set()\nassert not seen & set({private!r}), seen\n")
    result = run(program)
    assert result.passed, result.stderr_tail


def test_environment_is_minimal(monkeypatch):
    monkeypatch.setenv("VCASCADE_TEST_SECRET", "hunter2")
    program = ("import os\nassert 'VCASCADE_TEST_SECRET' not in os.environ, os.environ\n"
               "assert os.environ['HOME'] == os.getcwd() == os.environ['TMPDIR']\n")
    result = run(program)
    assert result.passed, result.stderr_tail


# ----------------------------------------------------------------------------- network


def test_public_network():
    result = run("import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=2)\n")
    assert result.reason == "forbidden"


def test_local_listener_is_unreachable(listener):
    port = listener.getsockname()[1]
    result = run(f"import socket\ns = socket.socket()\ns.connect(('127.0.0.1', {port}))\n")
    assert result.reason == "forbidden" and never_connected(listener)


@needs(network="namespace")
def test_namespace_holds_past_the_socket_guard(listener):
    """connect(2) through ctypes bypasses the guard; the empty network namespace still holds."""
    port = listener.getsockname()[1]
    program = ("import ctypes, struct\nlibc = ctypes.CDLL(None, use_errno=True)\nfd = libc.socket(2, 1, 0)\n"
               f"addr = struct.pack('=H', 2) + struct.pack('!H', {port}) + bytes([127, 0, 0, 1]) + bytes(8)\n"
               "assert fd >= 0 and libc.connect(fd, addr, 16) != 0\n")
    assert run(program).passed
    assert never_connected(listener)


def test_isolation_is_reported():
    iso = isolation()
    assert network_isolation() == iso.network in ("namespace", "guard")
    assert iso.filesystem in ("readonly_mounts", "guard") and iso.user in ("own_uid", "inherited")
    if os.geteuid() == 0 and cap_sys_admin():  # as here: the probe must have found the namespaces
        assert iso.network == "namespace" and iso.filesystem == "readonly_mounts"


# ----------------------------------------------------------------------------- the guard-only fallback


@pytest.mark.parametrize("program, refused", [
    (f"open({ESCAPE!r}, 'w')", "open("),
    (f"import pathlib\npathlib.Path({ESCAPE!r}).write_text('x')", "open("),
    (f"import os\nos.chdir('/tmp')\nopen({os.path.basename(ESCAPE)!r}, 'w')", "open("),
    (f"import os\nos.symlink({ESCAPE!r}, 'link')\nopen('link', 'w')", "open("),
    ("import shutil, os\nshutil.rmtree(os.path.dirname(os.getcwd()))", "os.rmdir"),
    ("import os\nos.fork()", "os.fork"),
    ("import subprocess\nsubprocess.run(['true'])", "subprocess"),
    ("import socket\nsocket.create_connection(('127.0.0.1', 9))", "socket"),
])
def test_guard_only_refusals(guard_only, no_escape_file, program, refused):
    result = run(program)
    assert result.reason == "forbidden" and f"refused {refused}" in result.stderr_tail


def test_guard_only_lets_the_program_use_its_own_directory(guard_only):
    program = ("import os, shutil, tempfile\nos.mkdir('d')\nopen('d/x', 'w').write('1')\nos.rename('d/x', 'd/y')\n"
               "shutil.rmtree('d')\nwith tempfile.TemporaryDirectory() as t:\n    open(os.path.join(t, 'q'), 'w')\n"
               "print('ok', file=open(os.devnull, 'w'))\n")
    result = run(program)
    assert result.passed, result.stderr_tail


# ----------------------------------------------------------------------------- many at once


def test_run_programs_mixes_good_and_bad(no_escape_file):
    cases = [
        ("assert sorted([3, 1, 2]) == [1, 2, 3]", "passed"),
        ("assert sum(range(5)) == 11", "failed"),
        ("while True:\n    pass", "timeout"),
        ("import os\nos.fork()", "forbidden"),
        ("x = bytearray(10**10)", "memory"),
        ("import sys\nsys.exit(0)\nassert False", "early_exit"),
        ("def f(:", "syntax_error"),
        ("import math\nassert math.isqrt(17) == 4", "passed"),
        (f"open({ESCAPE!r}, 'w')", "forbidden"),
        ("import ctypes\nctypes.string_at(0)", "killed_signal"),
        ("from collections import Counter\nassert Counter('hello')['l'] == 2", "passed"),
        ("while True:\n    print('spam' * 500)", "output_limit"),
        ("import socket\nsocket.create_connection(('1.1.1.1', 53))", "forbidden"),
        ("import os\nos._exit(0)", "early_exit"),
        ("import re\nassert re.sub('a', 'b', 'aa') == 'bb'", "passed"),
        ("raise ValueError('nope')", "failed"),
        ("import time\ntime.sleep(60)", "timeout"),
        ("import itertools\nassert len(list(itertools.permutations(range(4)))) == 24", "passed"),
        ("import subprocess\nsubprocess.run(['true'])", "forbidden"),
        ("import heapq\nassert heapq.heappop([1]) == 1", "passed"),
    ]
    start = time.monotonic()
    results = run_programs([p for p, _ in cases], workers=2, timeout_s=1.0, memory_mb=256, max_output_kb=128)
    assert [r.reason for r in results] == [reason for _, reason in cases]
    assert time.monotonic() - start < 45  # the 60 s sleep was killed at its limit, even on a slow CPU
    assert sandbox_processes() == []


# ----------------------------------------------------------------------------- extract_code


def test_extract_code_prefers_the_first_block_defining_a_function():
    reply = ("Here you go:\n```python\ndef add(a, b):\n    return a + b\n```\nUsage:\n```python\n"
             "print(add(1, 2))\n```\n")
    assert extract_code(reply) == "def add(a, b):\n    return a + b\n"
    setup_first = "```py\nimport math\n```\nthen\n```\nclass Box:\n    pass\n```"
    assert extract_code(setup_first) == "class Box:\n    pass\n"


def test_extract_code_longest_block_when_none_defines():
    reply = "```python\nx = 1\n```\n```python3\nx = [i * i for i in range(10)]\nprint(x)\n```"
    assert extract_code(reply) == "x = [i * i for i in range(10)]\nprint(x)\n"
    other_language = "Run it:\n```bash\npython solution.py --fast\n```"
    assert extract_code(other_language) == "python solution.py --fast\n"


def test_extract_code_unterminated_fence_and_no_fence():
    cut = "Sure.\n```python\ndef long(n):\n    total = 0\n    for i in range(n):\n        total +="
    assert extract_code(cut) == "def long(n):\n    total = 0\n    for i in range(n):\n        total +=\n"
    bare = "def f(x):\n    return x\n"
    assert extract_code(bare) == bare


def test_extract_code_odd_fences():
    indented = "1. Code:\n   ```Python\n   def f():\n       return 1\n   ```\n"
    assert extract_code(indented) == "def f():\n    return 1\n"
    closing_on_the_line = "```python\ndef f():\n    return 2```\nDone."
    assert extract_code(closing_on_the_line) == "def f():\n    return 2\n"
    not_python = "```output\n3\n```\n```python\ndef g():\n    pass\n```"
    assert extract_code(not_python) == "def g():\n    pass\n"
    assert check_solution(extract_code(indented), "assert f() == 1").passed
