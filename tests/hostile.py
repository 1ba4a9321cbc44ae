"""Harness of the hostile tests: run a snippet in a child process under memory and CPU limits and
measure what it cost (wall time, peak resident memory), so a bomb shows as a number, not a hung suite."""

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


_LAUNCHER = """
import atexit, os, resource, sys
def _peak():  # VmHWM is the peak of this program's own memory (ru_maxrss would count the forked parent's)
    with open("/proc/self/status") as f, open(os.environ["HOSTILE_PEAK"], "w") as out:
        out.write(next(line.split()[1] for line in f if line.startswith("VmHWM")))
atexit.register(_peak)
mem, cpu = int(os.environ["HOSTILE_MEM"]), int(os.environ["HOSTILE_CPU"])
resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
code = os.environ["HOSTILE_CODE"]
exec(compile(code, "<hostile>", "exec"))
"""


def limited(code, *args, mem_mb=4096, cpu_s=60, env=None, cwd=None, stdin=subprocess.DEVNULL):
    """Run `code` with `args` as sys.argv[1:] in a fresh interpreter under RLIMIT_AS and RLIMIT_CPU.

    Returns (exit code, negative for a signal; stdout; stderr; wall seconds; peak RSS in MB, or nan if it
    died before reporting).
    """
    with tempfile.NamedTemporaryFile("r") as peak_file:
        child_env = dict(os.environ, PYTHONPATH=str(ROOT))
        child_env.update(env or {})
        child_env.update(HOSTILE_PEAK=peak_file.name, HOSTILE_CODE=code, HOSTILE_MEM=str(mem_mb << 20),
                         HOSTILE_CPU=str(cpu_s))
        start = time.monotonic()
        try:
            proc = subprocess.run([sys.executable, "-c", _LAUNCHER, *args], capture_output=True, env=child_env,
                                  cwd=cwd, stdin=stdin, timeout=cpu_s * 3)  # a sleeping child escapes RLIMIT_CPU
            code_, out, err = proc.returncode, proc.stdout, proc.stderr
        except subprocess.TimeoutExpired as e:
            code_, out, err = "timeout", e.stdout or b"", e.stderr or b""
        seconds = time.monotonic() - start
        text = peak_file.read().strip()
    peak = int(text) / 1024 if text else float("nan")
    return code_, out.decode(errors="replace"), err.decode(errors="replace"), seconds, peak


def cli(*argv, **kw):
    """`npvitpose ARGV...` in a limited child (argv items may be bytes: file names that are not UTF-8)."""
    return limited("import sys; from npvitpose.cli import main; sys.exit(main(sys.argv[1:]))", *argv, **kw)


def raw_zip(path, members):
    """Write a zip by hand, so that it can lie: members are (name, method, stored bytes, CRC, declared size)."""
    import struct

    body, central = b"", b""
    for name, method, data, crc, size in members:
        name = name.encode()
        central += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, method, 0, 0, crc, len(data), size,
                               len(name), 0, 0, 0, 0, 0, len(body)) + name
        body += struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, method, 0, 0, crc, len(data), size, len(name), 0)
        body += name + data
    count = len(members)
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, count, count, len(central), len(body), 0)
    Path(path).write_bytes(body + central + end)
    return path


def deflate(data):
    import zlib

    z = zlib.compressobj(9, zlib.DEFLATED, -15)
    return z.compress(data) + z.flush()
