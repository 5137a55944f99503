"""Where signed results go: the author's repo (via their grant) or, failing that, the runner's own."""

from reactor.writers.base import (
    NoGrant,
    RecordConflict,
    ResultWriter,
    TransientWriteError,
    WriteError,
)
from reactor.writers.grant import GrantWriter
from reactor.writers.repo import RecordView, get_record
from reactor.writers.runner import RunnerRepoWriter, result_tid
from reactor.writers.session import AuthSession, Login, LoginRejected

__all__ = [
    "AuthSession", "GrantWriter", "Login", "LoginRejected", "NoGrant", "RecordConflict", "RecordView",
    "ResultWriter", "RunnerRepoWriter", "TransientWriteError", "WriteError", "get_record", "result_tid",
]
