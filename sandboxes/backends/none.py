"""`none`: a plain process. Limits (cgroups, rlimits, timeout, clean env) but no isolation."""

from __future__ import annotations

from pathlib import Path

from sandboxes.backends.base import Launch, LaunchSpec


class NoneBackend:
    name = "none"
    isolating = False

    def unavailable_reason(self) -> str | None:
        return None

    def tmp_path(self, scratch: Path) -> str:
        return str(scratch)

    def launch(self, spec: LaunchSpec) -> Launch:
        return Launch(argv=list(spec.argv), env=dict(spec.env), cwd=str(spec.scratch))
