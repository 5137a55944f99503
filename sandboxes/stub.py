"""Spare-process stub: join the instance's cgroup early, then become the executor on demand.

Joining a cgroup costs an RCU grace period (~10 ms on many kernels) and forking the runner with a
preexec hook costs more: a spare stub pays both ahead of time, off the request path. Started as
`python -I -S stub.py CONTROL_FD PROCS_FILE...`; prints "ready" once inside the cgroup, then waits
for one JSON line on CONTROL_FD: {"argv": [...], "env": {...}, "cwd": "...", "memfds": {token: [args]}}.
Each memfd token in argv is replaced by the number of a fresh fd holding NUL-separated args (for
`bwrap --args`, so secrets never appear on a command line). Stdlib only; runs outside any sandbox.
"""

import json
import os
import resource
import sys


def main() -> None:
    control = int(sys.argv[1])
    for procs in sys.argv[2:]:
        fd = os.open(procs, os.O_WRONLY)
        os.write(fd, b"0")
        os.close(fd)
    for limit, value in ((resource.RLIMIT_CORE, 0), (resource.RLIMIT_NOFILE, 1024), (resource.RLIMIT_FSIZE, 1 << 30)):
        hard = resource.getrlimit(limit)[1]
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(limit, (value, value))  # same values as process.JOIN_SCRIPT
    os.write(1, b"ready\n")
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(control, 1 << 16)
        if not chunk:
            os._exit(0)  # released unused
        data += chunk
    os.close(control)
    spec = json.loads(data)
    argv = list(spec["argv"])
    for token, args in spec.get("memfds", {}).items():
        fd = os.memfd_create("args", 0)  # inheritable: the executor reads it
        os.write(fd, b"".join(arg.encode() + b"\0" for arg in args))
        os.lseek(fd, 0, os.SEEK_SET)
        argv = [str(fd) if part == token else part for part in argv]
    os.chdir(spec["cwd"])
    try:
        os.execve(argv[0], argv, spec["env"])
    except OSError as error:
        os.write(2, f"at-run stub: cannot exec {argv[0]}: {error}\n".encode())
        os._exit(127)


if __name__ == "__main__":
    main()
