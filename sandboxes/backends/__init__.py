"""Isolation backends: each wraps an executor command line; see `base.Backend`."""

from __future__ import annotations

from sandboxes.backends.base import Backend, Launch, LaunchSpec
from sandboxes.backends.bwrap import BwrapBackend
from sandboxes.backends.none import NoneBackend

IMPLEMENTED: dict[str, type[Backend]] = {"none": NoneBackend, "bwrap": BwrapBackend}
PLANNED = ("container", "gvisor", "microvm", "wasm")

__all__ = ["Backend", "BwrapBackend", "IMPLEMENTED", "Launch", "LaunchSpec", "NoneBackend", "PLANNED"]
