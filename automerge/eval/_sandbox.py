"""Run untrusted, model-written Python programs in a sandboxed subprocess, never in-process.

Every program runs in a fresh child process with:

* its own temporary directory (cwd, HOME and TMPDIR), deleted afterwards;
* a scrubbed environment (PATH, HOME, TMPDIR, LANG only) and ``python -I -S`` (isolated mode: no
  user site, no PYTHON* variables, no site-packages);
* a wall-clock timeout (the whole process group is SIGKILLed) and rlimits set before the program
  starts: CPU seconds, address space (memory), file size, open files, core size 0 and process
  count;
* no network: a fresh, empty network namespace (``unshare --net``) when this machine allows it,
  and in every case an audit hook (``sys.addaudithook``) that refuses socket creation;
* when the evaluator runs as root, the program runs as ``nobody`` (``setpriv``), so the process
  limit counts and file permissions apply;
* the audit hook also refuses fork/exec/spawn/subprocess/kill, ctypes, and any write, rename,
  delete or chmod of a path outside the program's directory.

A program that breaks a rule, raises, runs out of time, memory or file size, or exits early is a
failed sample with its reason; the caller goes on with the next one. Audit hooks are a guard
against accidents, not a boundary against an adversary (C extensions can bypass them); the
namespace, the uid, the rlimits and the kill are the real walls. :func:`sandbox_info` says which
of them this machine gives.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

NOBODY = 65534

# Runs inside the child, before the program: limits, then the audit hook, then the program.
_BOOTSTRAP = r'''
import sys, os, resource, json
def _boot():
    cfg = json.loads(sys.argv[1])
    out = os.fdopen(int(cfg["fd"]), "w")
    nonce = cfg["nonce"]
    def report(status):
        for s in (sys.stdout, sys.stderr):
            try:
                s.flush()
            except BaseException:  # noqa: BLE001
                pass
        out.write("automerge-sandbox:" + nonce + ":" + status.replace("\n", " ")[:2000] + "\n")
        out.flush()
    lim = cfg["limits"]
    for name, value in lim.items():
        r = getattr(resource, name, None)
        if r is None or value is None:
            continue
        try:
            soft, hard = resource.getrlimit(r)
            v = value if hard == resource.RLIM_INFINITY else min(value, hard)
            resource.setrlimit(r, (v, v))
        except (ValueError, OSError) as e:
            report("error: cannot set " + name + ": " + str(e))
            return 3
    root = os.path.realpath(cfg["dir"])
    src = open(os.path.join(root, "program.py"), encoding="utf-8").read()
    # the program's own stdout/stderr go to files in its directory (bounded by RLIMIT_FSIZE)
    so = os.open(os.path.join(root, "stdout.txt"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    se = os.open(os.path.join(root, "stderr.txt"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(so, 1); os.dup2(se, 2); os.close(so); os.close(se)
    sys.stdout = open(1, "w", closefd=False); sys.stderr = open(2, "w", closefd=False)
    realpath, fspath, sep = os.path.realpath, os.fspath, os.sep
    WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    DENY = ("os.fork", "os.forkpty", "os.posix_spawn", "os.spawn", "os.exec", "os.system", "os.kill",
            "os.killpg", "os.startfile", "subprocess.Popen", "pty.spawn", "os.setuid", "os.setgid")
    PATH_EVENTS = {"os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.symlink", "os.link", "os.chmod",
                   "os.chown", "os.truncate", "os.utime", "os.chflags", "os.lchflags", "os.mkfifo",
                   "os.mknod", "shutil.rmtree", "shutil.copyfile", "shutil.copymode", "shutil.copystat",
                   "shutil.move", "shutil.chown"}
    busy = [False]
    def inside(p):
        try:
            p = fspath(p)
        except TypeError:
            return True   # file descriptors: already open
        if isinstance(p, bytes):
            p = p.decode("utf-8", "surrogateescape")
        if not isinstance(p, str):
            return True
        q = realpath(os.path.join(root, p))
        return q == root or q.startswith(root + sep)
    def hook(event, args):
        if busy[0]:
            return
        busy[0] = True
        try:
            if event.startswith("socket.") or event in ("_socket.socket", "socket.__new__"):
                raise PermissionError("sandbox: network access is not allowed (" + event + ")")
            if event.startswith(DENY):
                raise PermissionError("sandbox: " + event + " is not allowed (no processes)")
            if event.startswith("ctypes."):
                raise PermissionError("sandbox: " + event + " is not allowed (no ctypes)")
            if event == "open":
                path, mode, flags = (tuple(args) + (None, None, None))[:3]
                writes = (isinstance(flags, int) and flags & WRITE) or (
                    isinstance(mode, str) and any(c in mode for c in "wax+"))
                if writes and not inside(path):
                    raise PermissionError("sandbox: write outside the sandbox dir is not allowed: " + str(path))
            elif event in PATH_EVENTS:
                for a in args:
                    if isinstance(a, (str, bytes, os.PathLike)) and not inside(a):
                        raise PermissionError("sandbox: " + event + " outside the sandbox dir is not allowed: " + str(a))
        finally:
            busy[0] = False
    code = compile(src, "program.py", "exec")
    g = {"__name__": "__main__", "__builtins__": __builtins__, "__file__": os.path.join(root, "program.py")}
    sys.argv = ["program.py"]
    sys.addaudithook(hook)
    try:
        exec(code, g)
    except BaseException as e:  # noqa: BLE001 - SystemExit too: a program that exits early has not passed
        try:
            msg = type(e).__name__ + (": " + str(e) if str(e) else "")
        except BaseException:  # noqa: BLE001
            msg = type(e).__name__
        report("failed: " + msg)
        return 1
    report("passed")
    return 0
os._exit(_boot())
'''


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 5.0          # wall clock, the whole process group is killed after it
    cpu_s: int | None = None        # RLIMIT_CPU; None: ceil(timeout) + 1
    memory_mb: int = 1024           # RLIMIT_AS
    file_size_mb: int = 16          # RLIMIT_FSIZE
    open_files: int = 64            # RLIMIT_NOFILE
    processes: int = 64             # RLIMIT_NPROC (counts every process of the uid; root ignores it)
    output_chars: int = 2000        # stdout/stderr tail kept in the result


@dataclass(frozen=True)
class SandboxResult:
    passed: bool
    reason: str          # "passed" or why not: "failed: AssertionError", "timed out after 5.0 s", ...
    elapsed_s: float
    stdout: str = ""
    stderr: str = ""


@dataclass(frozen=True)
class _Launch:
    prefix: tuple[str, ...]
    python: str
    network: str          # "netns+audit-hook" | "audit-hook"
    user: str             # "nobody" | "caller"
    netns_how: str


def _try(cmd: list[str], timeout: float = 10.0) -> bool:
    try:
        r = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           timeout=timeout, env={"PATH": "/usr/bin:/bin"})
        return r.returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@lru_cache(maxsize=1)
def _launch() -> _Launch:
    """Probe once which walls this machine allows: a network namespace, a uid drop."""
    unshare = shutil.which("unshare") or ("/usr/bin/unshare" if os.path.exists("/usr/bin/unshare") else None)
    setpriv = shutil.which("setpriv") or ("/usr/bin/setpriv" if os.path.exists("/usr/bin/setpriv") else None)
    root = os.geteuid() == 0
    netns: list[str] = []
    how = "none"
    if unshare:
        if root and _try([unshare, "--net", "--", "true"]):
            netns, how = [unshare, "--net", "--"], "unshare --net"
        elif _try([unshare, "--net", "--map-root-user", "--", "true"]):
            netns, how = [unshare, "--net", "--map-root-user", "--"], "unshare --net --map-root-user"
    pythons = [sys.executable, getattr(sys, "_base_executable", sys.executable),
               shutil.which("python3") or "", "/usr/bin/python3"]
    pythons = [p for p in dict.fromkeys(pythons) if p and os.path.exists(p)]
    # an interpreter whose binary and stdlib every user can read (a venv under /root is not one)
    pythons.sort(key=lambda p: not _world_accessible(p))
    check = ["-I", "-S", "-c", "import math, json, re, collections, itertools, resource"]
    drop: list[str] = []
    python = sys.executable
    user = "caller"
    if root and setpriv and how != "unshare --net --map-root-user":
        cand = [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--"]
        for py in pythons:
            if _try(netns + cand + [py, *check]):
                drop, python, user = cand, py, "nobody"
                break
    if not drop:
        for py in pythons:
            if _try(netns + [py, *check]):
                python = py
                break
    network = "netns+audit-hook" if netns else "audit-hook"
    return _Launch(tuple(netns + drop), python, network, user, how)


def _world_accessible(path: str) -> bool:
    """The file and every directory above it (after resolving links) are world-executable."""
    try:
        real = Path(os.path.realpath(path))
        if not os.stat(real).st_mode & 0o001:
            return False
        return all(os.stat(d).st_mode & 0o001 for d in real.parents)
    except OSError:
        return False


def sandbox_info() -> dict[str, str]:
    """Which walls this machine gives: network ("netns+audit-hook" or "audit-hook"), user, python."""
    ln = _launch()
    return {"network": ln.network, "netns": ln.netns_how, "user": ln.user, "python": ln.python,
            "limits": "wall timeout + RLIMIT_CPU/AS/FSIZE/NOFILE/NPROC/CORE"}


def _reason_for_signal(sig: int, timeout: float) -> str:
    names = {signal.SIGXCPU: "CPU time limit exceeded", signal.SIGXFSZ: "file size limit exceeded",
             signal.SIGSEGV: "crashed (SIGSEGV)", signal.SIGABRT: "crashed (SIGABRT)",
             signal.SIGKILL: "killed (SIGKILL)"}
    return names.get(sig, f"killed by signal {sig}")


class Sandbox:
    """Runs programs one per subprocess, in parallel threads (``workers``), each with the limits."""

    def __init__(self, limits: SandboxLimits | None = None, *, workers: int | None = None):
        self.limits = limits or SandboxLimits()
        self.workers = workers or max(1, min(4, os.cpu_count() or 1))
        self._launch = _launch()

    @property
    def info(self) -> dict[str, str]:
        return sandbox_info()

    def _rlimits(self) -> dict[str, int | None]:
        lim = self.limits
        cpu = lim.cpu_s if lim.cpu_s is not None else int(lim.timeout_s) + 1
        return {"RLIMIT_CPU": cpu, "RLIMIT_AS": lim.memory_mb << 20, "RLIMIT_FSIZE": lim.file_size_mb << 20,
                "RLIMIT_NOFILE": lim.open_files, "RLIMIT_CORE": 0,
                "RLIMIT_NPROC": lim.processes}

    def run(self, program: str) -> SandboxResult:
        t0 = time.perf_counter()
        ln = self._launch
        d = tempfile.mkdtemp(prefix="automerge-sandbox-")
        try:
            (Path(d) / "program.py").write_text(program, encoding="utf-8")
            (Path(d) / "boot.py").write_text(_BOOTSTRAP, encoding="utf-8")
            if ln.user == "nobody":
                for p in (d, *(os.path.join(d, f) for f in ("program.py", "boot.py"))):
                    os.chown(p, NOBODY, NOBODY)
            rfd, wfd = os.pipe()
            nonce = secrets.token_hex(8)
            cfg = {"fd": wfd, "nonce": nonce, "dir": d, "limits": self._rlimits()}
            cmd = [*ln.prefix, ln.python, "-I", "-S", "-B", os.path.join(d, "boot.py"), json.dumps(cfg)]
            env = {"PATH": "/usr/bin:/bin", "HOME": d, "TMPDIR": d, "LANG": "C.UTF-8", "PYTHONHASHSEED": "0"}
            try:
                proc = subprocess.Popen(cmd, cwd=d, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, pass_fds=(wfd,), start_new_session=True,
                                        close_fds=True)
            finally:
                os.close(wfd)
            timed_out = False
            try:
                _, boot_err = proc.communicate(timeout=self.limits.timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                _killpg(proc.pid)
                _, boot_err = proc.communicate()
            with os.fdopen(rfd, "r", errors="replace") as f:
                report = f.read(8192)
            status = None
            tag = f"automerge-sandbox:{nonce}:"
            for line in report.splitlines():
                if line.startswith(tag):
                    status = line[len(tag):]
            out = _tail(Path(d) / "stdout.txt", self.limits.output_chars)
            err = _tail(Path(d) / "stderr.txt", self.limits.output_chars)
            if timed_out:
                reason = f"timed out after {self.limits.timeout_s:g} s (wall clock)"
            elif status is not None:
                reason = status
            elif proc.returncode is not None and proc.returncode < 0:
                reason = _reason_for_signal(-proc.returncode, self.limits.timeout_s)
            else:
                tail = (boot_err or b"").decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
                reason = f"exited with status {proc.returncode} without a result {tail[0][:300]}".rstrip()
            return SandboxResult(passed=(reason == "passed"), reason=reason,
                                 elapsed_s=time.perf_counter() - t0, stdout=out, stderr=err)
        except OSError as e:
            return SandboxResult(False, f"sandbox error: {e}", time.perf_counter() - t0)
        finally:
            shutil.rmtree(d, ignore_errors=True)

    def run_many(self, programs: Sequence[str], *, progress: Callable[[int, int], None] | None = None
                 ) -> list[SandboxResult]:
        """Results in the order of ``programs``; one failure never stops the others."""
        if not programs:
            return []
        if self.workers == 1 or len(programs) == 1:
            out = []
            for i, p in enumerate(programs):
                out.append(self.run(p))
                if progress:
                    progress(i + 1, len(programs))
            return out
        with ThreadPoolExecutor(max_workers=self.workers) as ex:
            return list(ex.map(self.run, programs))


def _killpg(pid: int) -> None:
    """SIGKILL the program's session (its pid is its process group: start_new_session). Only called
    while the child is unreaped, so the group id cannot have been reused by anyone else."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError, OSError):
        pass


def _tail(path: Path, n: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - n))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""
