"""A sandbox for model-written Python (tool-integrated rollouts, SimpleTIR): a separate,
isolated interpreter with hard limits, whose every failure is a result, never an
exception in the caller.

``run_python(code, limits)`` runs ``code`` in a fresh ``python -I -S`` (isolated: no
user site, no ``PYTHON*`` variables, no site-packages; a scrubbed environment) in its
own session, from a scratch directory made for the call and deleted after it. Layers:

  kernel limits   RLIMIT_CPU (CPU seconds), RLIMIT_AS (address space), RLIMIT_FSIZE
                  (bytes any file, stdout and stderr included, may reach), RLIMIT_NPROC
                  and RLIMIT_CORE = 0, set by the child's first lines (no preexec
                  function: the caller, a JAX process, is never forked with Python
                  code to run) and closed to it afterwards; a wall-clock deadline
                  after which the whole process group is killed
  audit hook      installed before the code runs and impossible to remove from Python
                  (PEP 578): opening a file outside the scratch directory (the Python
                  installation is readable, never writable), creating a socket,
                  forking, spawning or exec-ing a process, signalling another process,
                  changing directory out of the scratch directory, importing ctypes /
                  cffi or loading a shared library raise ``SandboxViolation``
  no shared state stdout / stderr go to files the caller reads back (at most
                  ``limits.output_bytes`` each); no file descriptor of the caller is
                  inherited; the code never sees the caller's memory or environment

``Result.status`` says what happened: ok, error (the code raised), timeout (wall
clock), cpu_limit, memory, output_limit, blocked (a violation). The audit hook is a
CPython mechanism, not a kernel boundary: it stops the code a model writes by
accident or by imitation, with the kernel limits behind it; code crafted to attack
CPython itself needs a container or a VM.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

STATUSES = ("ok", "error", "timeout", "cpu_limit", "memory", "output_limit", "blocked")
VIOLATION = "SandboxViolation"


@dataclasses.dataclass(frozen=True)
class Limits:
  """What one call may use."""

  wall_s: float = 5.0  # wall-clock seconds before the process group is killed
  cpu_s: int = 2  # CPU seconds (RLIMIT_CPU)
  memory_mb: int = 512  # address space (RLIMIT_AS)
  output_bytes: int = 16_384  # of stdout and of stderr kept; any file is capped at 64x this

  def __post_init__(self):
    if self.wall_s <= 0 or self.cpu_s < 1 or self.memory_mb < 64 or self.output_bytes < 1:
      raise ValueError(f"sandbox limits out of range: {self}")


@dataclasses.dataclass(frozen=True)
class Result:
  status: str  # one of STATUSES
  stdout: str
  stderr: str
  returncode: int | None
  seconds: float
  truncated: bool = False  # stdout or stderr was longer than limits.output_bytes

  @property
  def ok(self) -> bool:
    return self.status == "ok"


# Runs in the child before the code: the audit hook, then the code itself. Kept to the
# standard library's builtins (the interpreter is isolated and has no site-packages).
_BOOT = r"""
import os, resource, sys
cpu_s, memory, out_cap = (int(x) for x in sys.argv[2:5])
resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
resource.setrlimit(resource.RLIMIT_FSIZE, (out_cap, out_cap))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
resource.setrlimit(resource.RLIMIT_NPROC, (1, 1))  # not enforced for root: the hook is
scratch = os.path.realpath(sys.argv[1])
readable = tuple(os.path.realpath(p) for p in {sys.prefix, sys.base_prefix, sys.exec_prefix,
                                               sys.base_exec_prefix})
class SandboxViolation(RuntimeError):
  pass
def inside(path, roots):
  try:
    p = os.path.realpath(os.fsdecode(path))
  except Exception:
    return False
  return any(p == r or p.startswith(r + os.sep) for r in roots)
BLOCKED = ("socket.", "os.fork", "os.forkpty", "os.posix_spawn", "os.spawn", "os.exec",
           "os.system", "subprocess.", "os.kill", "os.killpg", "signal.pthread_kill",
           "ctypes.", "os.setuid", "os.chroot", "pty.", "sys.remote_exec", "winreg.",
           "resource.setrlimit", "resource.prlimit")
def hook(event, args):
  if event.startswith(BLOCKED):
    raise SandboxViolation(event)
  if event == "import" and args[0].split(".")[0] in ("ctypes", "_ctypes", "cffi"):
    raise SandboxViolation("import " + args[0])
  if event == "open":
    path, mode = args[0], args[1]
    if isinstance(path, int):
      return
    writing = mode is not None and any(c in str(mode) for c in "wax+")
    if isinstance(args[2], int) and args[2] & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
      writing = True
    if inside(path, (scratch,)) or (not writing and inside(path, readable)):
      return
    raise SandboxViolation("open " + os.fsdecode(path))
  if event in ("os.listdir", "os.scandir"):  # reading a directory: the installation too
    path = args[0]
    if isinstance(path, (str, bytes, os.PathLike)) and not inside(path, (scratch,) + readable):
      raise SandboxViolation(event + " " + os.fsdecode(path))
  if event in ("os.chdir", "os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.symlink",
               "os.link", "os.truncate", "os.chmod", "os.chown", "os.utime",
               "shutil.rmtree", "shutil.copyfile", "shutil.move"):
    for path in args[:2]:
      if isinstance(path, (str, bytes, os.PathLike)) and not inside(path, (scratch,)):
        raise SandboxViolation(event + " " + os.fsdecode(path))
os.chdir(scratch)
sys.set_int_max_str_digits(0)  # exact big numbers are what the tool is for; RLIMIT_CPU bounds it
sys.path[:] = [p for p in sys.path if inside(p, readable)]
sys.addaudithook(hook)
del hook
source = open(os.path.join(scratch, "main.py"), encoding="utf-8").read()
namespace = {"__name__": "__main__", "__builtins__": __builtins__}  # not this module's
exec(compile(source, "main.py", "exec"), namespace)
"""


def run_python(code: str, limits: Limits = Limits()) -> Result:
  """Runs ``code`` under ``limits`` (module doc); never raises for what the code does."""
  scratch = tempfile.mkdtemp(prefix="jaxpost-sandbox-")
  io_dir = tempfile.mkdtemp(prefix="jaxpost-sandbox-io-")  # outside the scratch dir
  try:
    with open(os.path.join(scratch, "main.py"), "w", encoding="utf-8") as f:
      f.write(code)
    out_path, err_path = os.path.join(io_dir, "stdout"), os.path.join(io_dir, "stderr")
    env = {"PATH": "/usr/bin:/bin", "HOME": scratch, "TMPDIR": scratch, "LANG": "C.UTF-8"}
    start = time.monotonic()
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
      proc = subprocess.Popen(
        [sys.executable, "-I", "-S", "-c", _BOOT, scratch, str(limits.cpu_s),
         str(limits.memory_mb * 1024 * 1024), str(64 * limits.output_bytes)],
        stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=scratch, env=env,
        close_fds=True, start_new_session=True,
      )  # fmt: skip
      timed_out = False
      try:
        proc.wait(timeout=limits.wall_s)
      except subprocess.TimeoutExpired:
        timed_out = True
      _kill_group(proc.pid)  # also whatever it left behind
      proc.wait()
    seconds = time.monotonic() - start
    stdout, cut_out = _read(out_path, limits.output_bytes)
    stderr, cut_err = _read(err_path, limits.output_bytes)
    status = _status(proc.returncode, stderr, timed_out)
    return Result(status, stdout, stderr, proc.returncode, seconds, cut_out or cut_err)
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
    shutil.rmtree(io_dir, ignore_errors=True)


def _kill_group(pid: int) -> None:
  try:
    os.killpg(pid, signal.SIGKILL)
  except (ProcessLookupError, PermissionError):
    pass


def _read(path: str, limit: int) -> tuple[str, bool]:
  with open(path, "rb") as f:
    data = f.read(limit + 1)
  return data[:limit].decode("utf-8", errors="replace"), len(data) > limit


def _status(returncode: int, stderr: str, timed_out: bool) -> str:
  if timed_out:
    return "timeout"
  if returncode == 0:
    return "ok"
  if returncode in (-signal.SIGXCPU, -signal.SIGKILL):
    return "cpu_limit"  # RLIMIT_CPU: SIGXCPU at the soft limit, SIGKILL at the hard one
  if returncode == -signal.SIGXFSZ or "File too large" in stderr:
    return "output_limit"
  if VIOLATION in stderr:
    return "blocked"
  if "MemoryError" in stderr:
    return "memory"
  return "error"
