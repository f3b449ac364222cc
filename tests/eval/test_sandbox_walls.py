"""Hostile programs against the sandbox's walls (issue 10). Each program first switches the audit
hook off (its state is reachable from the program's own Python, as an attacker would find it), then
tries to get out; the test asserts from outside that nothing got out. The walls are required in CI
(CI=true or AUTOMERGE_REQUIRE_SANDBOX=1): there a machine without bubblewrap fails these tests
instead of skipping them."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from automerge.eval import Sandbox, SandboxLimits, sandbox_info
from automerge.eval._humaneval import load_problems, sandbox_job
from automerge.eval._sandbox import GRACE_S, NOBODY, _launch, require_walls

# The attacker's one-liner, spelled out: find the hook's re-entrancy flag through gc and set it.
HOOK_OFF = '''
import gc, os, sys
def _hook_off():
    for o in gc.get_objects():
        if type(o).__name__ == "function" and o.__name__ == "hook" and o.__closure__:
            for c in o.__closure__:
                v = c.cell_contents
                if type(v) is list and v == [False]:
                    v[0] = True
                    return True
    return False
assert _hook_off(), "the audit hook was not found"
open("/tmp/hook-is-off", "w").write("x")     # outside the program's directory: the hook would refuse it
'''


def _backends() -> list[str]:
    have = []
    if _launch("auto").backend == "bwrap":
        have.append("bwrap")
    if os.geteuid() == 0 and _launch("unshare").backend == "unshare":
        have.append("unshare")
    return have


BACKENDS = _backends()


@pytest.fixture(params=["bwrap", "unshare"])
def walled(request) -> Sandbox:
    """A sandbox with real walls, one per backend; bubblewrap is required where walls are required."""
    if request.param not in BACKENDS:
        if request.param == "bwrap" and require_walls():
            pytest.fail("bubblewrap is required here (CI / AUTOMERGE_REQUIRE_SANDBOX) but bwrap does not work: "
                        f"{sandbox_info()}; install it with `make sandbox-deps` (apt-get install bubblewrap)")
        pytest.skip(f"sandbox backend {request.param} not available on this machine")
    return Sandbox(SandboxLimits(timeout_s=4.0, memory_mb=512), workers=1, backend=request.param)


def test_ci_has_the_walls_up():
    if not require_walls():
        pytest.skip("walls required only under CI / AUTOMERGE_REQUIRE_SANDBOX")
    info = sandbox_info()
    assert info["backend"] == "bwrap" and not info["warning"], info


def _marker() -> str:
    return f"automerge-hostile-{uuid.uuid4().hex}"


def _alive(marker: str) -> list[int]:
    """Host pids whose command line carries ``marker`` (the host /proc sees every namespace)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if marker.encode() in (d / "cmdline").read_bytes():
                    out.append(int(d.name))
            except OSError:
                pass
    return out


def test_write_outside_with_and_without_the_hook(walled, tmp_path):
    m = _marker()
    targets = [tmp_path / f"{m}.txt", Path.cwd() / f"{m}.txt", Path("/var/tmp") / m, Path("/dev/shm") / m,
               Path("/usr") / m, Path("/tmp") / m]
    tmp_path.chmod(0o777)    # even a world-writable host dir stays out of reach
    attempt = ("wrote, refused = [], []\n"
               f"for t in {[str(t) for t in targets]!r}:\n"
               "    try:\n"
               "        with open(t, 'w') as f:\n"
               "            f.write('pwned')\n"
               "        wrote.append(t)\n"
               "    except OSError as e:\n"
               "        refused.append(str(e))\n"
               "print('WROTE', wrote)\n"
               "print('REFUSED', refused)\n")
    with_hook = walled.run(attempt)
    assert "WROTE []" in with_hook.stdout and "write outside the sandbox dir" in with_hook.stdout, with_hook.stdout
    without = walled.run(HOOK_OFF + attempt)
    assert without.passed, without.reason     # the hook is off: the program ran to its end
    for t in targets:
        assert not t.exists(), f"{t} written from inside the sandbox"
    # what it could write landed in its private tmpfs mounts, gone with it
    wrote = without.stdout.split("WROTE ")[1].splitlines()[0]
    assert f"'/tmp/{m}'" in wrote, without.stdout
    assert set(eval(wrote)) <= {f"/tmp/{m}", f"/dev/shm/{m}", f"/var/tmp/{m}"}, without.stdout


def test_processes_after_the_hook_is_off_stay_inside(walled, tmp_path):
    """os.system and subprocess start, but cannot write outside, signal a host process of the same uid,
    or outlive the run."""
    m = _marker()
    target = tmp_path / "spawned.txt"
    tmp_path.chmod(0o777)
    victim = subprocess.Popen(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--",
                               "sleep", "60"] if os.geteuid() == 0 else ["sleep", "60"])
    try:
        prog = HOOK_OFF + (
            "import subprocess, signal\n"
            f"rc = os.system('echo pwned > {target}; kill -9 {victim.pid} -1 2>/dev/null')\n"
            f"subprocess.Popen(['/bin/sh', '-c', 'exec -a {m} sleep 600'])\n"
            "try:\n"
            "    os.kill(-1, signal.SIGKILL)\n"     # every process this uid may signal
            "except OSError:\n"
            "    pass\n")
        # os.kill(-1) kills the program itself too (inside its namespace): no pass expected, only containment
        r = walled.run(prog)
        assert not target.exists()
        assert victim.poll() is None, "a host process of the program's uid was killed from inside"
        assert _alive(m) == [], f"a process started in the sandbox outlived the run: {r}"
    finally:
        victim.kill()
        victim.wait()


DAEMON = '''
import os, sys, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execv(sys.executable, [sys.executable, "-c",
                 "import time; open('daemon-started', 'w').write('1'); time.sleep(600)", "{m}"])
    os._exit(0)
while not os.path.exists("daemon-started"):    # the daemon is up, holding every fd it inherited
    time.sleep(0.01)
'''


@pytest.mark.parametrize("then", ["exit", "loop"])
def test_setsid_daemon_dies_with_the_run(walled, then):
    m = _marker()
    prog = HOOK_OFF + DAEMON.replace("{m}", m) + ("" if then == "exit" else "while True:\n    pass\n")
    t0 = time.monotonic()
    r = walled.run(prog)
    elapsed = time.monotonic() - t0
    assert _alive(m) == [], "the setsid daemon outlived the run"
    if then == "exit":
        assert r.passed, r.reason
    else:
        assert "timed out" in r.reason
    # bounded: the timeout plus the grace period (and slack for a loaded machine), not the daemon's 600 s
    assert elapsed < walled.limits.timeout_s + 2 * GRACE_S + 10


def test_setsid_daemon_holding_the_call_pipe_cannot_hang_the_tests(walled):
    m = _marker()
    prog = HOOK_OFF + DAEMON.replace("{m}", m) + "def f(x):\n    return x + 1\n"
    ok = walled.run_tests(prog, entry_point="f", tests="def check(c):\n    assert c(1) == 2\n")
    assert ok.passed, ok.reason
    assert _alive(m) == []
    m = _marker()
    prog = HOOK_OFF + DAEMON.replace("{m}", m) + "def f(x):\n    os._exit(0)\n"
    t0 = time.monotonic()
    r = walled.run_tests(prog, entry_point="f", tests="def check(c):\n    assert c(1) == 2\n")
    assert not r.passed, r.reason     # the main process ended: the namespace with it, daemon and pipe
    assert time.monotonic() - t0 < walled.limits.timeout_s + 2 * GRACE_S + 10
    assert _alive(m) == []


# Forgeries of a pass: every string and small int the program can reach is tried as a nonce / fd.
FORGE = HOOK_OFF + '''
import gc, json
strings = set()
frame = sys._getframe()
while frame is not None:
    for v in list(frame.f_locals.values()) + list(frame.f_globals.values()):
        if isinstance(v, str) and len(v) < 100:
            strings.add(v)
        if isinstance(v, dict):
            strings.update(str(x) for x in v.values() if isinstance(x, (str, int)))
    frame = frame.f_back
for o in gc.get_objects():
    if isinstance(o, dict):
        strings.update(x for x in o.values() if isinstance(x, str) and 8 <= len(x) <= 64)
lines = ['automerge-sandbox:' + s + ':passed' for s in strings]
lines += [json.dumps({"verdict": "passed"}), json.dumps({"ready": True})]
lines += [json.dumps({"ok": True}), json.dumps({"ok": False})] * 50
blob = ("\\n".join(lines) + "\\n").encode()
for fd in range(0, 64):
    try:
        os.write(fd, blob)
    except OSError:
        pass
'''


def test_a_failing_program_cannot_report_itself_passed(walled):
    prob = load_problems(1)[0]            # has_close_elements
    wrong = "    return False\n"
    attacks = {
        "forge_then_exit": wrong + FORGE + "os._exit(0)\n",
        "forge_then_serve": wrong + FORGE,
        "exit_before_tests": wrong + "import os\nos._exit(0)\n",
        "equal_to_anything": ("    class Yes:\n        def __eq__(self, o):\n            return True\n"
                              "        __ne__ = lambda self, o: False\n        __bool__ = lambda self: True\n"
                              "    return Yes()\n"),
        "read_the_tests": ("    import os\n    src = open(os.path.join(os.getcwd(), 'program.py')).read()\n"
                           "    assert 'candidate' in src, 'the tests are not in the program'\n    return False\n"),
    }
    good = walled.run_tests(**sandbox_job(prob, prob["canonical_solution"]))
    assert good.passed, good.reason
    for name, completion in attacks.items():
        r = walled.run_tests(**sandbox_job(prob, completion))
        assert not r.passed, f"{name}: {r.reason}"
    r = walled.run_tests(**sandbox_job(prob, attacks["equal_to_anything"]))
    assert "cannot leave the sandbox" in r.reason


def test_network_with_the_hook_off(walled, tmp_path):
    tcp = socket.socket()
    tcp.bind(("0.0.0.0", 0))
    tcp.listen(8)
    tcp.setblocking(False)
    port = tcp.getsockname()[1]
    host_ip = _host_ip()
    m = _marker()
    unix_path = f"/tmp/{m}.sock"      # a world-writable Unix socket on the host's /tmp
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(unix_path)
    os.chmod(unix_path, 0o777)
    unix.listen(8)
    unix.setblocking(False)
    abstract = socket.socket(socket.AF_UNIX)
    abstract.bind("\0" + m)
    abstract.listen(8)
    abstract.setblocking(False)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5):   # reachable from outside
            tcp.accept()[0].close()
        targets = [("tcp", "127.0.0.1", port), ("tcp", host_ip, port), ("tcp", "1.1.1.1", 53),
                   ("unix", unix_path), ("unix", "\0" + m), ("unix", "/var/run/postgresql/.s.PGSQL.5432"),
                   ("unix", "/run/redis/redis-server.sock")]
        prog = HOOK_OFF + (
            "import socket\nreached = []\n"
            f"for t in {targets!r}:\n"
            "    try:\n"
            "        if t[0] == 'tcp':\n"
            "            s = socket.create_connection((t[1], t[2]), timeout=2)\n"
            "        else:\n"
            "            s = socket.socket(socket.AF_UNIX)\n"
            "            s.connect(t[1])\n"
            "        reached.append(t)\n"
            "    except OSError as e:\n"
            "        pass\n"
            "try:\n"
            "    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "    u.sendto(b'x', ('8.8.8.8', 53))\n"
            "    reached.append('udp')\n"
            "except OSError:\n"
            "    pass\n"
            "print('REACHED', reached)\n")
        r = walled.run(prog)
        assert r.passed, r.reason
        assert "REACHED []" in r.stdout, r.stdout
        for s in (tcp, unix, abstract):
            with pytest.raises(BlockingIOError):
                s.accept()
    finally:
        for s in (tcp, unix, abstract):
            s.close()
        os.unlink(unix_path)


def _host_ip() -> str:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect(("10.255.255.255", 1))     # no packet is sent: this picks the outgoing interface
        return s.getsockname()[0]
    except OSError:
        return "127.0.0.1"
    finally:
        s.close()


def test_root_only_files_and_the_host_tree_are_out_of_sight(walled):
    r = walled.run(HOOK_OFF + (
        "seen = []\n"
        "for p in ['/etc/shadow', '/root', '/home', '/work']:\n"
        "    try:\n"
        "        (open(p).read(1) if not os.path.isdir(p) else os.listdir(p))\n"
        "        seen.append(p)\n"
        "    except OSError:\n"
        "        pass\n"
        "print('SEEN', seen, os.getuid())\n"))
    assert r.passed, r.reason
    if walled.info["backend"] == "bwrap":
        assert f"SEEN [] {NOBODY}" in r.stdout, r.stdout
    else:   # unshare: the host tree is visible read-only, root-only files stay closed to nobody
        assert "/etc/shadow" not in r.stdout.split("SEEN")[1] and str(NOBODY) in r.stdout, r.stdout


def test_walls_down_are_loud(capfd):
    info = sandbox_info("none")
    assert info["backend"] == "none" and "WALLS ARE DOWN" in info["warning"]
    sb = Sandbox(SandboxLimits(timeout_s=4.0), workers=1, backend="none")
    rs = sb.run_tests_many([{"program": "def f(x):\n    return x\n", "entry_point": "f",
                             "tests": "def check(c):\n    assert c(3) == 3\n"}])
    assert rs[0].passed, rs[0].reason
    assert "SANDBOX WALLS ARE DOWN" in capfd.readouterr().err


def test_the_programs_directory_is_a_capped_private_tmpfs(walled):
    """Many files within RLIMIT_FSIZE each cannot fill the host's disk: the directory holds tmp_mb."""
    r = walled.run(HOOK_OFF + (
        "for i in range(10 * %d):\n"
        "    with open('f%%d' %% i, 'wb') as f:\n"
        "        f.write(b'x' * (1 << 20))\n") % walled.limits.tmp_mb)
    assert not r.passed and "No space left on device" in r.reason, r.reason
