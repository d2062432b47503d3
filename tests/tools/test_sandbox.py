"""The Python sandbox: results for ordinary code, and every escape stopped and reported."""

import os
import time

import pytest

from jaxpost.tools import sandbox

FAST = sandbox.Limits(wall_s=3.0, cpu_s=1, memory_mb=256, output_bytes=1000)


def test_ordinary_code_runs_with_big_numbers_and_its_own_files():
  r = sandbox.run_python(
    "import math\nprint(123456789 ** 600 % 97, math.factorial(30))\n"
    "open('notes.txt', 'w').write('kept')\nprint(open('notes.txt').read())\n"
    "print(len(str(7 ** 20000)))",  # past CPython's default 4300-digit conversion limit
    FAST,
  )
  assert r.ok and r.returncode == 0 and not r.stderr, r
  assert r.stdout.split() == [str(123456789**600 % 97), "265252859812191058636308480000000",
                              "kept", "16902"]  # fmt: skip


def test_an_exception_is_an_error_result_with_its_traceback():
  r = sandbox.run_python("def f():\n  return 1 / 0\nf()", FAST)
  assert r.status == "error" and "ZeroDivisionError" in r.stderr


@pytest.mark.parametrize(
  "name, code, status",
  [
    ("hang", "import time\ntime.sleep(60)", "timeout"),
    ("spin", "while True:\n  pass", "cpu_limit"),
    ("fork", "import os\nos.fork()", "blocked"),
    ("fork_bomb", "import os\nwhile True:\n  os.fork()", "blocked"),
    ("subprocess", "import subprocess\nsubprocess.run(['ls', '/'])", "blocked"),
    ("system", "import os\nos.system('ls /')", "blocked"),
    ("memory", "x = bytearray(4 * 1024 ** 3)", "memory"),
    ("memory_growth", "x = []\nwhile True:\n  x.append(bytearray(10 ** 7))", "memory"),
    ("read_outside", "print(open('/etc/hostname').read())", "blocked"),
    ("read_relative", "print(open('../../../etc/hostname').read())", "blocked"),
    ("read_environ", "print(open('/proc/self/environ').read())", "blocked"),
    ("write_outside", "open('/tmp/jaxpost-sandbox-escape', 'w').write('x')", "blocked"),
    ("os_open", "import os\nos.open('/tmp/jaxpost-sandbox-escape', os.O_WRONLY | os.O_CREAT)",
     "blocked"),
    ("list_root", "import os\nprint(os.listdir('/'))", "blocked"),
    ("chdir", "import os\nos.chdir('/')", "blocked"),
    ("remove_outside", "import os\nos.remove('/tmp/jaxpost-sandbox-escape')", "blocked"),
    ("socket", "import socket\nsocket.create_connection(('127.0.0.1', 80))", "blocked"),
    ("kill_parent", "import os\nos.kill(os.getppid(), 9)", "blocked"),
    ("ctypes", "import ctypes\nctypes.CDLL(None)", "blocked"),
    ("flood", "import sys\nwhile True:\n  sys.stdout.write('x' * 100000)", "output_limit"),
    ("big_file", "f = open('big', 'wb')\nwhile True:\n  f.write(b'x' * 100000)", "output_limit"),
  ],
)  # fmt: skip
def test_every_escape_is_stopped_and_reported(name, code, status):
  start = time.monotonic()
  r = sandbox.run_python(code, FAST)
  assert r.status == status, (name, r.status, r.stderr[-500:])
  assert time.monotonic() - start < FAST.wall_s + 2.0  # never longer than the deadline
  assert not os.path.exists("/tmp/jaxpost-sandbox-escape")
  assert len(r.stdout) <= FAST.output_bytes and len(r.stderr) <= FAST.output_bytes


def test_the_caller_is_untouched_and_no_process_is_left_behind():
  r = sandbox.run_python("import time\nprint('up', flush=True)\ntime.sleep(60)", FAST)
  assert r.status == "timeout" and r.stdout == "up\n"
  assert r.truncated is False
  # The scratch and output directories are gone, and so is the interpreter that ran there.
  left = [d for d in os.listdir("/tmp") if d.startswith("jaxpost-sandbox-")]
  assert not left, left
  running = []
  for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
      with open(f"/proc/{pid}/cmdline", "rb") as f:
        if b"jaxpost-sandbox-" in f.read():
          running.append(pid)
    except OSError:
      pass
  assert not running, running


def test_bad_limits_are_refused():
  with pytest.raises(ValueError, match="limits"):
    sandbox.Limits(wall_s=0)


def test_the_limits_cannot_be_raised_from_inside():
  r = sandbox.run_python(
    "import resource\nresource.setrlimit(resource.RLIMIT_CPU, (100, 100))\nprint('raised')"
  )
  assert r.status == "blocked" and "raised" not in r.stdout
