"""Run untrusted, model-written Python programs behind kernel walls, never in-process.

The walls are Linux namespaces, set up by bubblewrap (``bwrap``, the Debian package
``bubblewrap``, what Flatpak uses); Python-level guards are no boundary against a program that
wants out. Every program runs:

* **filesystem**: on a minimal read-only root (``/usr`` and its ``/bin``, ``/lib`` links only: no
  ``/etc``, ``/home``, ``/root``, ``/run``, no Unix sockets of the host), a private size-capped
  tmpfs ``/tmp`` holding its directory ``/tmp/box`` (read-only ``program.py``), a private ``/dev``
  and ``/proc``. No host path is writable: what it writes vanishes with the namespace, and its
  stdout/stderr go to files the runner opened outside;
* **network**: an empty network namespace (loopback only, nobody listening);
* **processes**: a PID namespace whose init is bubblewrap. When the program ends, or when the
  runner kills that init at the timeout, the kernel kills every process in it, ``setsid`` daemons
  included; ``--die-with-parent`` does the same when the evaluator dies. It sees and signals
  nothing outside (PID and IPC namespaces, another uid);
* **user**: as ``nobody`` (the runner, when root, drops to uid 65534 before bubblewrap, so the
  program's uid is ``nobody`` outside too and root-owned files stay closed), no capabilities,
  ``no_new_privs``, no nested user namespaces;
* **limits**: rlimits set before the program starts (CPU seconds, address space, file size, open
  files, processes, core size 0) and a wall-clock timeout;
* an audit hook (``sys.addaudithook``) refusing sockets, processes, ctypes and writes outside the
  directory: a guard against accidents that gives clear failure reasons, not a wall.

Without bubblewrap, as root, ``unshare --pid --fork --kill-child --mount --net --ipc --uts``
gives the same process and network walls; its filesystem wall is weaker (the host's tree stays
visible, remounted read-only, with private tmpfs over ``/tmp``, ``/var/tmp``, ``/dev/shm`` and
``/run``). Without either, only the uid drop, the rlimits, the session kill and the audit hook
remain: :func:`sandbox_info` says so, and the evaluator prints a loud warning.

**Verdicts.** :meth:`Sandbox.run_tests` (HumanEval) keeps the tests out of the program's reach:
the program's process only loads the code and answers calls to its entry point over a pipe, with
plain data (``_wire.py``); the tests run in a separate driver process outside the namespaces,
which the program cannot see, signal or write to, and the verdict is that driver's. A program can
neither forge a pass report (there is no report channel or secret in its process), nor exit early
to fake one, nor read the tests, nor return an object that compares equal to anything. What stays
possible in principle: the program computes whatever it likes from the arguments it is called with
(special-casing inputs it sees), and it may fail or hang on purpose. :meth:`Sandbox.run` runs a
self-checking program (code and asserts in one interpreter): its verdict is the program's own exit
status, so a program can fake its own pass (``os._exit(0)``) — fine for programs you wrote, not
for scoring model output.

The runner never waits on a program's descendants: the program's stdout and stderr go to files,
the only pipes it holds are the call pipes, read with a deadline, and every wait is bounded, so a
run ends within its timeout plus a grace period of a few seconds.
"""

from __future__ import annotations

import json
import logging
import os
import select
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

log = logging.getLogger(__name__)

NOBODY = 65534
BOX = "/tmp/box"          # the program's directory inside the namespace
GRACE_S = 3.0             # after the timeout: time for the kernel to tear the namespace down
_WIRE_SRC = (Path(__file__).with_name("_wire.py")).read_text(encoding="utf-8")

# Runs inside the sandbox, before the program: limits, output files, the audit hook, then either the
# whole program ("program" mode) or the program's definitions and a loop answering calls ("serve").
_BOOTSTRAP = r'''
import sys, os, resource, json
def _boot():
    cfg = json.loads(sys.argv[1])
    root = os.path.realpath(cfg["dir"])
    for name, value in cfg["limits"].items():
        r = getattr(resource, name, None)
        if r is None or value is None:
            continue
        try:
            soft, hard = resource.getrlimit(r)
            v = value if hard == resource.RLIM_INFINITY else min(value, hard)
            resource.setrlimit(r, (v, v))
        except (ValueError, OSError) as e:
            os.write(2, ("automerge-sandbox: cannot set " + name + ": " + str(e) + "\n").encode())
            return 3
    src = open(os.path.join(root, "program.py"), encoding="utf-8").read()
    # stdout/stderr: files the runner opened outside the sandbox (bounded by RLIMIT_FSIZE)
    os.dup2(cfg["out_fd"], 1); os.dup2(cfg["err_fd"], 2); os.close(cfg["out_fd"]); os.close(cfg["err_fd"])
    sys.stdout = open(1, "w", closefd=False); sys.stderr = open(2, "w", closefd=False)
    serve = cfg["mode"] == "serve"
    if serve:
        wire = {}
        exec(cfg["wire"], wire)
        req = os.fdopen(cfg["req_fd"], "rb")
        resp = os.fdopen(cfg["resp_fd"], "wb")
        def reply(obj):
            resp.write((json.dumps(obj, separators=(",", ":")) + "\n").encode())
            resp.flush()
    def why(e):
        try:
            return type(e).__name__ + (": " + str(e)[:500] if str(e) else "")
        except BaseException:  # noqa: BLE001
            return type(e).__name__
    def failed(e):
        msg = "failed: " + why(e)
        if serve:
            reply({"error": msg})
        else:   # run(): only the reason's text; the verdict is the exit status
            os.write(cfg["reason_fd"], msg.encode("utf-8", "replace")[:2000])
        return 1
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
        return failed(e)
    if not serve:
        return 0
    fn = g.get(cfg["entry"])
    if not callable(fn):
        reply({"error": "failed: the program defines no function " + cfg["entry"]})
        return 1
    reply({"ready": True})
    while True:
        line = req.readline()
        if not line:
            return 0
        try:
            call = json.loads(line)
            args = wire["decode"](call["a"])
            kwargs = wire["decode"](call["k"])
        except BaseException as e:  # noqa: BLE001
            reply({"error": "failed: bad call: " + why(e)})
            return 1
        try:
            out = {"ok": wire["encode"](fn(*args, **kwargs))}
        except BaseException as e:  # noqa: BLE001
            try:
                out = {"raised": [type(e).__name__, str(e)[:500]]}
            except BaseException:  # noqa: BLE001
                out = {"raised": [type(e).__name__, ""]}
        try:
            reply(out)
        except BaseException as e:  # noqa: BLE001 - a result too large for the file-size limit, ...
            return failed(e)
_code = _boot()
for _s in (sys.stdout, sys.stderr):
    try:
        _s.flush()
    except BaseException:  # noqa: BLE001
        pass
os._exit(_code)
'''

# The test driver: runs outside the namespaces, as a separate process the program cannot see, and
# prints the verdict. Its input (tests, context, fds) comes on stdin; it only talks to the program
# through the two call pipes, reading with a deadline and a size limit.
_DRIVER = r'''
import json, os, select, sys, time, builtins
p = json.loads(sys.stdin.read())
wire = {}
exec(p["wire"], wire)
deadline = time.monotonic() + p["timeout_s"]
LIMIT = 1 << 20
req = os.fdopen(p["req_fd"], "wb")
resp = p["resp_fd"]
buf = bytearray()

class Verdict(Exception):
    pass

def read_line():
    while True:
        i = buf.find(b"\n")
        if i >= 0:
            line = bytes(buf[:i]); del buf[:i + 1]
            return line
        if len(buf) > LIMIT:
            raise Verdict("failed: the program sent a reply over 1 MiB")
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([resp], [], [], left)[0]:
            raise Verdict("timed out")
        chunk = os.read(resp, 65536)
        if not chunk:
            raise Verdict("ended")
        buf.extend(chunk)

def reply():
    try:
        return json.loads(read_line())
    except Verdict:
        raise
    except Exception as e:
        raise Verdict("failed: garbled reply from the program (" + type(e).__name__ + ")")

class Candidate:
    """Calls the program's function in the sandbox; returns plain data."""
    def __call__(self, *args, **kwargs):
        try:
            line = json.dumps({"a": wire["encode"](list(args)), "k": wire["encode"](kwargs)}) + "\n"
        except (TypeError, ValueError) as e:
            raise Verdict("error: the tests passed a value that cannot cross the wall: " + str(e))
        try:
            req.write(line.encode()); req.flush()
        except (BrokenPipeError, OSError):
            raise Verdict("ended")
        r = reply()
        if type(r) is dict and "ok" in r:
            try:
                return wire["decode"](r["ok"])
            except Exception as e:
                raise Verdict("failed: garbled result from the program (" + type(e).__name__ + ")")
        if type(r) is dict and type(r.get("raised")) is list and len(r["raised"]) == 2:
            name, msg = str(r["raised"][0]), str(r["raised"][1])[:500]
            cls = getattr(builtins, name, None)
            if not (isinstance(cls, type) and issubclass(cls, Exception)):
                cls = RuntimeError
            raise cls(msg)
        if type(r) is dict and "error" in r:
            raise Verdict(str(r["error"])[:600])
        raise Verdict("failed: garbled reply from the program")

def main():
    try:
        r = reply()
        if type(r) is dict and "error" in r:
            return str(r["error"])[:600]
        if r != {"ready": True}:
            return "failed: garbled reply from the program"
        ns = {"__name__": "__automerge_tests__"}
        exec(p["context"], ns)
        candidate = Candidate()
        ns[p["entry"]] = candidate     # tests may call the function by its name too
        exec(p["tests"], ns)
        ns["check"](candidate)
    except Verdict as v:
        return str(v)
    except BaseException as e:
        try:
            msg = type(e).__name__ + (": " + str(e)[:500] if str(e) else "")
        except BaseException:
            msg = type(e).__name__
        return "failed: " + msg
    return "passed"

verdict = main()
sys.stdout.write(json.dumps({"verdict": verdict}) + "\n")
sys.stdout.flush()
os._exit(0)
'''


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 5.0          # wall clock; then the namespace is killed
    cpu_s: int | None = None        # RLIMIT_CPU; None: ceil(timeout) + 1
    memory_mb: int = 1024           # RLIMIT_AS
    file_size_mb: int = 16          # RLIMIT_FSIZE
    open_files: int = 64            # RLIMIT_NOFILE
    processes: int = 64             # RLIMIT_NPROC (counts every process of the uid; root ignores it)
    tmp_mb: int = 64                # size of the private /tmp that holds the program's directory
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
    backend: str          # "bwrap" | "unshare" | "none"
    python: str           # interpreter for the program (every user can read it)
    user: str             # "nobody" | "caller"
    drop: tuple[str, ...]  # setpriv prefix to nobody, or ()
    bwrap: str = ""
    unshare: str = ""

    @property
    def root_dir(self) -> str | None:
        """The program's directory as the program sees it (None: the host path itself)."""
        return None if self.backend == "none" else BOX

    def command(self, home: str, limits: SandboxLimits) -> list[str]:
        """The launcher in front of the interpreter, for a program whose ``program.py`` and ``boot.py``
        are in ``home`` on the host. Its directory is a fresh one on the private, size-capped /tmp."""
        if self.backend == "bwrap":
            return [*self.drop, *_bwrap_args(self.bwrap, home, self.python, limits.tmp_mb)]
        if self.backend == "unshare":
            return [self.unshare, "--pid", "--fork", "--kill-child", "--mount", "--net", "--ipc", "--uts",
                    "--mount-proc", "--", "/bin/sh", "-c", _UNSHARE_SCRIPT, "sh", home, str(limits.tmp_mb),
                    *self.drop]
        return list(self.drop)


def _bwrap_args(bwrap: str, home: str, python: str, tmp_mb: int) -> list[str]:
    args = [bwrap, "--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
            "--unshare-cgroup-try", "--disable-userns", "--uid", str(NOBODY), "--gid", str(NOBODY),
            "--die-with-parent", "--new-session", "--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    real = os.path.realpath(python)
    if not real.startswith("/usr/"):   # an interpreter outside /usr: its installation, read-only
        prefix = str(Path(real).parent.parent)
        args += ["--ro-bind", prefix, prefix]
    args += ["--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache",
             "--proc", "/proc", "--dev", "/dev", "--size", str(tmp_mb << 20), "--tmpfs", "/tmp",
             "--perms", "0777", "--dir", BOX, "--chdir", BOX]
    for f in ("program.py", "boot.py"):
        args += ["--ro-bind", os.path.join(home, f), f"{BOX}/{f}"]
    return args
    return args


# unshare fallback, run as root in the fresh mount namespace: the host tree read-only, private
# tmpfs over the world-writable places and /run (Unix sockets), the program's files copied into a
# fresh directory on the private /tmp, then drop to nobody.
_UNSHARE_SCRIPT = r'''
set -e
home="$1"; size="$2"; shift 2
mount --make-rprivate /
for m in $(awk '{print $5}' /proc/self/mountinfo | sort -u); do
  case "$m" in /proc|/proc/*|/sys|/sys/*|/dev|/dev/*) ;; *) mount -o remount,bind,ro "$m" 2>/dev/null || true ;; esac
done
mount -t tmpfs -o size=1m tmpfs /run
mkdir /run/in
mount --bind "$home" /run/in
mount -t tmpfs -o "size=${size}m,mode=1777" tmpfs /tmp
mkdir -m 0777 /tmp/box
cp /run/in/program.py /run/in/boot.py /tmp/box/
umount /run/in
for d in /var/tmp /dev/shm /dev/mqueue; do [ -d "$d" ] && mount -t tmpfs -o size=1m tmpfs "$d" || true; done
cd /tmp/box
exec "$@"
'''


def _try(cmd: list[str], timeout: float = 15.0) -> bool:
    try:
        r = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           timeout=timeout, env={"PATH": "/usr/bin:/bin"})
        return r.returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _which(name: str) -> str | None:
    return shutil.which(name) or next((p for p in (f"/usr/bin/{name}", f"/bin/{name}") if os.path.exists(p)), None)


# the interpreter works and its directory is writable
_PROBE = "import math, json, re, collections, itertools, resource\nopen('probe.txt', 'w').write('ok')"


@lru_cache(maxsize=4)
def _launch(backend: str = "auto") -> _Launch:
    """Probe once which walls this machine gives: bubblewrap, else unshare (root), else none.
    ``backend`` forces one ("bwrap", "unshare", "none"); AUTOMERGE_SANDBOX sets the default."""
    want = backend if backend != "auto" else os.environ.get("AUTOMERGE_SANDBOX", "auto")
    root = os.geteuid() == 0
    setpriv = _which("setpriv")
    drop = (setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--") if root and setpriv else ()
    pythons = [p for p in dict.fromkeys(["/usr/bin/python3", sys.executable,
                                         getattr(sys, "_base_executable", sys.executable),
                                         shutil.which("python3") or ""]) if p and os.path.exists(p)]
    pythons.sort(key=lambda p: (not _world_accessible(p), not os.path.realpath(p).startswith("/usr/")))
    probe_dir = tempfile.mkdtemp(prefix="automerge-sandbox-probe-")
    try:
        os.chmod(probe_dir, 0o755)
        for f in ("program.py", "boot.py"):
            Path(probe_dir, f).write_text("")
        if drop:
            os.chown(probe_dir, NOBODY, NOBODY)
        bwrap, unshare = _which("bwrap"), _which("unshare")
        if want in ("auto", "bwrap") and bwrap:
            for py in pythons:
                ln = _Launch("bwrap", py, "nobody" if drop else "caller", drop, bwrap=bwrap)
                if _try([*ln.command(probe_dir, SandboxLimits()), py, "-I", "-S", "-c", _PROBE]):
                    return ln
        if want in ("auto", "unshare") and unshare and root and setpriv:
            for py in pythons:
                ln = _Launch("unshare", py, "nobody", drop, unshare=unshare)
                if _try([*ln.command(probe_dir, SandboxLimits()), py, "-I", "-S", "-c", _PROBE]):
                    return ln
        check = ["-I", "-S", "-c", "import math, json, re, collections, itertools, resource"]
        for py in pythons:
            if drop and _try([*drop, py, *check]):
                return _Launch("none", py, "nobody", drop)
        for py in pythons:
            if _try([py, *check]):
                return _Launch("none", py, "caller", ())
        return _Launch("none", sys.executable, "caller", ())
    finally:
        shutil.rmtree(probe_dir, ignore_errors=True)


def _world_accessible(path: str) -> bool:
    """The file and every directory above it (after resolving links) are world-executable."""
    try:
        real = Path(os.path.realpath(path))
        if not os.stat(real).st_mode & 0o001:
            return False
        return all(os.stat(d).st_mode & 0o001 for d in real.parents)
    except OSError:
        return False


_WALLS = {
    "bwrap": {"filesystem": "read-only minimal root (/usr only), private tmpfs /tmp, only its dir writable",
              "network": "empty network namespace",
              "processes": "pid namespace killed at the end (setsid daemons included)"},
    "unshare": {"filesystem": "host tree read-only, private tmpfs /tmp /var/tmp /dev/shm /run, only its dir "
                              "writable (other host files readable per their permissions)",
                "network": "empty network namespace",
                "processes": "pid namespace killed at the end (setsid daemons included)"},
    "none": {"filesystem": "DOWN: only the uid's permissions and the audit hook",
             "network": "DOWN: only the audit hook",
             "processes": "DOWN: process-group kill (a setsid daemon survives)"},
}


def sandbox_info(backend: str = "auto") -> dict[str, str]:
    """Which walls this machine gives: backend, filesystem, network, processes, user, python, limits,
    verdict, and ``warning`` (empty when the walls are up)."""
    ln = _launch(backend)
    info = {"backend": ln.backend, **_WALLS[ln.backend], "user": ln.user, "python": ln.python,
            "limits": "wall timeout + RLIMIT_CPU/AS/FSIZE/NOFILE/NPROC/CORE",
            "verdict": "run_tests: a test driver outside the namespaces; run: the program's exit status",
            "warning": ""}
    if ln.backend == "none":
        info["warning"] = ("SANDBOX WALLS ARE DOWN: generated programs run without namespaces (install bubblewrap: "
                           "apt-get install bubblewrap, or run as root for the unshare fallback); a hostile "
                           "program can write where its uid may, reach the network and leave processes behind")
    elif ln.user != "nobody":
        info["warning"] = "sandbox: programs run as the caller's uid inside the namespaces (not root: no uid drop)"
    return info


def require_walls() -> bool:
    """CI and AUTOMERGE_REQUIRE_SANDBOX=1 demand real walls (tests fail, not skip, without them)."""
    return bool(os.environ.get("AUTOMERGE_REQUIRE_SANDBOX") or os.environ.get("CI"))


def _reason_for_status(code: int | None) -> str:
    if code is None:
        return "did not end"
    sig = -code if code < 0 else (code - 128 if code > 128 else 0)
    names = {signal.SIGXCPU: "CPU time limit exceeded", signal.SIGXFSZ: "file size limit exceeded",
             signal.SIGSEGV: "crashed (SIGSEGV)", signal.SIGABRT: "crashed (SIGABRT)",
             signal.SIGKILL: "killed (SIGKILL)"}
    if sig:
        return names.get(sig, f"killed by signal {sig}")
    return f"exited with status {code}"


_warned: set[str] = set()


class Sandbox:
    """Runs programs one per namespace, in parallel threads (``workers``), each with the limits.

    ``backend``: "auto" (bubblewrap, else unshare, else none), or one of them to insist on it.
    """

    def __init__(self, limits: SandboxLimits | None = None, *, workers: int | None = None, backend: str = "auto"):
        if backend not in ("auto", "bwrap", "unshare", "none"):
            raise ValueError(f"sandbox backend {backend!r}: use auto, bwrap, unshare or none")
        self.limits = limits or SandboxLimits()
        self.workers = workers or max(1, min(4, os.cpu_count() or 1))
        self._launch = _launch(backend)
        if backend != "auto" and self._launch.backend != backend:
            raise RuntimeError(f"sandbox backend {backend} is not available on this machine "
                               f"(got {self._launch.backend}); see sandbox_info()")
        self.backend = backend

    @property
    def info(self) -> dict[str, str]:
        return sandbox_info(self.backend)

    def warn_if_walls_down(self) -> str:
        """Print the walls-down warning to stderr (once per process and backend); returns it."""
        w = self.info["warning"]
        if w and self._launch.backend == "none" and self.backend not in _warned:
            _warned.add(self.backend)
            bar = "!" * 78
            print(f"{bar}\n!! {w}\n{bar}", file=sys.stderr, flush=True)
            log.warning(w)
        return w

    def _rlimits(self) -> dict[str, int | None]:
        lim = self.limits
        cpu = lim.cpu_s if lim.cpu_s is not None else int(lim.timeout_s) + 1
        return {"RLIMIT_CPU": cpu, "RLIMIT_AS": lim.memory_mb << 20, "RLIMIT_FSIZE": lim.file_size_mb << 20,
                "RLIMIT_NOFILE": lim.open_files, "RLIMIT_CORE": 0, "RLIMIT_NPROC": lim.processes}

    # ------------------------------------------------------------------------------------------------
    def run(self, program: str) -> SandboxResult:
        """Run a self-checking program; passed = it ran to its end (its own word: see the module doc)."""
        return self._run(program, None)

    def run_tests(self, program: str, *, entry_point: str, tests: str, context: str = "") -> SandboxResult:
        """Load ``program`` in the sandbox and run ``tests`` (source defining ``check(candidate)``) in a
        driver outside it, ``candidate`` calling the program's ``entry_point``. ``context`` (trusted
        source, e.g. the problem's helper functions) is executed before the tests in the driver."""
        return self._run(program, {"entry": entry_point, "tests": tests, "context": context})

    def _run(self, program: str, tests: dict | None) -> SandboxResult:
        t0 = time.perf_counter()
        lim = self.limits
        home = tempfile.mkdtemp(prefix="automerge-sandbox-")    # the runner's; bound read-only into the sandbox
        procs: list[subprocess.Popen] = []       # the program first, then the test driver
        init: _NamespaceInit | None = None
        fds: list[int] = []                      # descriptors still open here (closed in finally)
        try:
            box, inner = self._stage(home, program)
            pipes = self._start(home, box, inner, tests, fds, procs)
            init = _NamespaceInit.of(procs[0]) if self._launch.backend != "none" else None
            deadline = t0 + lim.timeout_s
            verdict: str | None = None
            if tests is not None:
                verdict, code = self._drive(tests, pipes, deadline, fds, procs, init)
            else:
                code = _end(procs[0], max(0.0, deadline - time.perf_counter()), init)
            out_tail = _tail(Path(home) / "stdout.txt", lim.output_chars)
            err_tail = _tail(Path(home) / "stderr.txt", lim.output_chars)
            reason = self._reason(verdict, code, home)
            return SandboxResult(passed=(reason == "passed"), reason=reason, elapsed_s=time.perf_counter() - t0,
                                 stdout=out_tail, stderr=err_tail)
        except OSError as e:
            return SandboxResult(False, f"sandbox error: {e}", time.perf_counter() - t0)
        finally:
            for fd in fds:
                os.close(fd)
            for p in procs:        # normally all ended already; never wait unbounded
                if p.poll() is None:
                    _end(p, 0.0, init if p is procs[0] else None)
            if init is not None:
                init.close()
            shutil.rmtree(home, ignore_errors=True)

    def _stage(self, home: str, program: str) -> tuple[str, str]:
        """Write the program and the bootstrap into ``home``; returns (box, the directory the sandbox
        sees): ``box`` is the program's own copy, used when there are no namespaces."""
        ln = self._launch
        for name, text in (("program.py", program), ("boot.py", _BOOTSTRAP)):
            Path(home, name).write_text(text, encoding="utf-8")
            os.chmod(os.path.join(home, name), 0o644)
        os.chmod(home, 0o711)              # nobody may read the two files by name, not list the rest
        box = os.path.join(home, "box")     # used without namespaces only
        if ln.backend == "none":
            os.mkdir(box, 0o700)
            for name in ("program.py", "boot.py"):
                shutil.copy(os.path.join(home, name), box)
            if ln.user == "nobody":
                for p in (box, *(os.path.join(box, f) for f in ("program.py", "boot.py"))):
                    os.chown(p, NOBODY, NOBODY)
        return box, ln.root_dir or box

    def _start(self, home: str, box: str, inner: str, tests: dict | None, fds: list[int],
               procs: list[subprocess.Popen]) -> tuple[int, int] | None:
        """Launch the program in the sandbox (appended to ``procs``). Every descriptor opened here is
        recorded in ``fds`` at once, so the caller closes it whatever fails. Returns the test
        driver's pipe ends (request write, response read) when there are tests."""
        ln = self._launch
        # stdout, stderr and run()'s failure reason: files outside the sandbox, open before it starts
        outs = [os.open(os.path.join(home, n), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
                for n in ("stdout.txt", "stderr.txt", "reason.txt")]
        fds.extend(outs)
        cfg: dict = {"dir": inner, "limits": self._rlimits(), "mode": "program",
                     "out_fd": outs[0], "err_fd": outs[1], "reason_fd": outs[2]}
        pass_fds: tuple[int, ...] = tuple(outs)
        pipes = None
        if tests is not None:
            req_r, req_w = os.pipe()
            fds.extend((req_r, req_w))
            resp_r, resp_w = os.pipe()
            fds.extend((resp_r, resp_w))
            cfg.update(mode="serve", entry=tests["entry"], req_fd=req_r, resp_fd=resp_w, wire=_WIRE_SRC)
            pass_fds += (req_r, resp_w)
            pipes = (req_w, resp_r)
        cmd = [*ln.command(home, self.limits), ln.python, "-I", "-S", "-B", os.path.join(inner, "boot.py"),
               json.dumps(cfg)]
        env = {"PATH": "/usr/bin:/bin", "HOME": inner, "TMPDIR": inner, "LANG": "C.UTF-8", "PYTHONHASHSEED": "0"}
        with open(os.path.join(home, "launcher.err"), "wb") as err:
            procs.append(subprocess.Popen(cmd, cwd=box if ln.backend == "none" else "/", env=env,
                                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                          pass_fds=pass_fds, start_new_session=True, close_fds=True))
        for fd in outs:
            os.close(fd)
            fds.remove(fd)
        return pipes

    def _drive(self, tests: dict, pipes: tuple[int, int], deadline: float, fds: list[int],
               procs: list[subprocess.Popen], init: _NamespaceInit | None) -> tuple[str, int | None]:
        """Run the test driver outside the sandbox against the serving program; (verdict, the
        program's exit code, None when it had to be killed)."""
        req_w, resp_r = pipes
        driver = subprocess.Popen([sys.executable, "-I", "-S", "-c", _DRIVER], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                  pass_fds=(req_w, resp_r), start_new_session=True, close_fds=True)
        procs.append(driver)
        for fd in fds:
            os.close(fd)
        fds.clear()
        payload = json.dumps({"wire": _WIRE_SRC, "context": tests["context"], "tests": tests["tests"],
                              "entry": tests["entry"],
                              "req_fd": req_w, "resp_fd": resp_r,
                              "timeout_s": max(0.0, deadline - time.perf_counter())})
        try:
            out, _ = driver.communicate(payload.encode(), timeout=max(0.0, deadline - time.perf_counter())
                                        + GRACE_S)
            verdict = json.loads(out.decode().strip().splitlines()[-1])["verdict"]
        except subprocess.TimeoutExpired:
            verdict = "timed out"
        except (ValueError, KeyError, IndexError):
            verdict = f"test driver failed ({_reason_for_status(driver.returncode)})"
        # the verdict is in: the program has until the timeout to exit by itself, then its namespace dies
        code = _end(procs[0], max(0.0, deadline - time.perf_counter()) if verdict == "ended" else 0.0, init)
        return verdict, code

    def _reason(self, verdict: str | None, code: int | None, home: str) -> str:
        """The result's reason: the driver's verdict, else (run()) what the exit status says."""
        if verdict is None:      # run(): the program's exit status
            if code is None:
                reason = "timed out"
            elif code == 0:
                reason = "passed"
            else:
                reason = _file(Path(home) / "reason.txt") or self._status_reason(code, home)
        elif verdict == "ended":
            reason = f"failed: the program ended before answering ({self._status_reason(code, home)})"
        else:
            reason = verdict
        if reason == "timed out":
            reason = f"timed out after {self.limits.timeout_s:g} s (wall clock)"
        return reason

    def _status_reason(self, code: int | None, home: str) -> str:
        if code is None:
            return "did not end"
        launcher = _tail(Path(home) / "launcher.err", 300).strip().splitlines()
        if code in (1, 3) and launcher:          # the launcher (bwrap, rlimit set-up) failed, not the program
            return f"exited with status {code}: {launcher[-1]}"
        return _reason_for_status(code)

    def run_many(self, programs: Sequence[str], *, progress: Callable[[int, int], None] | None = None
                 ) -> list[SandboxResult]:
        """Results in the order of ``programs``; one failure never stops the others."""
        return self._many(self.run, [(p,) for p in programs], progress)

    def run_tests_many(self, jobs: Sequence[dict], *, progress: Callable[[int, int], None] | None = None
                       ) -> list[SandboxResult]:
        """``run_tests(**job)`` for each job (keys program, entry_point, tests, context), in order."""
        return self._many(lambda j: self.run_tests(**j), [(j,) for j in jobs], progress)

    def _many(self, fn, argss, progress) -> list[SandboxResult]:
        self.warn_if_walls_down()
        if not argss:
            return []
        if self.workers == 1 or len(argss) == 1:
            out = []
            for i, a in enumerate(argss):
                out.append(fn(*a))
                if progress:
                    progress(i + 1, len(argss))
            return out
        with ThreadPoolExecutor(max_workers=self.workers) as ex:
            return list(ex.map(lambda a: fn(*a), argss))


class _NamespaceInit:
    """The PID namespace's init (the launcher's child), held by a pidfd so that no reused pid is ever
    signalled. The kernel kills every process of the namespace when its init exits, and the init's
    exit completes only after they are all gone: waiting for it is waiting for the whole namespace.
    (The launcher itself may exit a moment earlier: bubblewrap's monitor exits on its init's report.)"""

    def __init__(self, fd: int):
        self.fd = fd

    @classmethod
    def of(cls, launcher: subprocess.Popen, limit_s: float = 10.0) -> _NamespaceInit | None:
        t_end = time.monotonic() + limit_s
        while time.monotonic() < t_end:
            kids = _children(launcher.pid)
            if kids:
                try:
                    return cls(os.pidfd_open(kids[0]))
                except OSError:
                    return None
            if launcher.poll() is not None:
                return None
            time.sleep(0.002)
        return None

    def wait(self, timeout: float) -> bool:
        return bool(select.select([self.fd], [], [], max(0.0, timeout))[0])

    def kill(self) -> None:
        try:
            signal.pidfd_send_signal(self.fd, signal.SIGKILL)
        except OSError:
            pass

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _end(proc: subprocess.Popen, wait_s: float, init: _NamespaceInit | None) -> int | None:
    """Wait up to ``wait_s`` for the launcher to exit; past that, kill the namespace's init (the kernel
    then kills every process in it) and the launcher's session. Then wait, bounded, until the init is
    gone, so nothing of the program is alive when this returns. The launcher's exit status, None when
    it had to be killed."""
    code: int | None
    try:
        code = proc.wait(timeout=max(0.0, wait_s))
    except subprocess.TimeoutExpired:
        code = None
        if init is not None:
            init.kill()
        else:
            for child in _children(proc.pid):
                try:
                    os.kill(child, signal.SIGKILL)
                except OSError:
                    pass
        try:
            proc.wait(timeout=GRACE_S)
        except subprocess.TimeoutExpired:
            try:     # the launcher is unreaped, so its process group id cannot have been reused
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass
            try:
                proc.wait(timeout=GRACE_S)
            except subprocess.TimeoutExpired:
                log.warning("sandbox: launcher %d did not die within %.0f s of SIGKILL", proc.pid, GRACE_S)
    if init is not None and not init.wait(GRACE_S):
        init.kill()
        if not init.wait(GRACE_S):
            log.warning("sandbox: the namespace's init did not die within %.0f s of SIGKILL", GRACE_S)
    return code


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except (OSError, ValueError):
        return []


def _tail(path: Path, n: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - n))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _file(path: Path) -> str:
    return _tail(path, 600).strip()
