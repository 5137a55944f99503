"""The isolation backend interface: turn "run this executor" into a contained process launch.

A backend only wraps a command line (namespaces, mounts, users). Process spawning, cgroups,
timeouts and the protocol are shared by all backends. Paths are identical inside and outside the
sandbox, so runtimes never translate paths.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class LaunchSpec:
    """What an instance needs: the runtime's argv and env plus the paths it may see."""

    argv: list[str]
    env: dict[str, str]
    ro_paths: list[Path]
    read_paths: list[Path]
    write_paths: list[Path]
    net: bool
    scratch: Path
    memory_mb: int


@dataclass
class Launch:
    """A ready-to-exec command.

    `memfds` maps a token that appears in `argv` to arguments that must reach the command
    through an inherited fd instead (NUL-separated), e.g. for `bwrap --args FD`: the token is
    replaced by that fd's number at exec time.
    """

    argv: list[str]
    env: dict[str, str]
    cwd: str
    memfds: dict[str, list[str]] = field(default_factory=dict)


class Backend(Protocol):
    name: str
    isolating: bool

    def unavailable_reason(self) -> str | None:
        """None when usable here, else a one-line reason (blocking: may run a short probe)."""
        ...

    def tmp_path(self, scratch: Path) -> str:
        """The executor's TMPDIR/HOME as seen from inside."""
        ...

    def launch(self, spec: LaunchSpec) -> Launch:
        ...
