"""flask_pgtq: a background task queue for Flask on PostgreSQL alone."""

from __future__ import annotations

from .exceptions import (
    ActionNotAllowed,
    ArgumentsMismatch,
    ArgumentsNotSerializable,
    Cancel,
    ChildFailed,
    ConfigurationError,
    DatabaseError,
    DatabaseUnavailable,
    DuplicateHandler,
    InvalidName,
    InvalidRequest,
    NotClaimed,
    PayloadTooLarge,
    PgTqError,
    Retry,
    SchemaNotReady,
    SetupError,
    Snooze,
    TaskCancelled,
    TaskFailed,
    TaskNotFound,
    TaskTimeout,
    UnknownTask,
    UsageError,
    WaitTimeout,
)
from .extension import PgTq
from .handler import Args, Handler
from .runner import current_task
from .task import State, Task
from .workflow import Signature, Workflow, WorkflowError, chain, chord, group

__all__ = [
    "ActionNotAllowed",
    "Args",
    "ArgumentsMismatch",
    "ArgumentsNotSerializable",
    "Cancel",
    "ChildFailed",
    "ConfigurationError",
    "DatabaseError",
    "DatabaseUnavailable",
    "DuplicateHandler",
    "Handler",
    "InvalidName",
    "InvalidRequest",
    "NotClaimed",
    "PayloadTooLarge",
    "PgTq",
    "PgTqError",
    "Retry",
    "SchemaNotReady",
    "SetupError",
    "Snooze",
    "Signature",
    "State",
    "Task",
    "TaskCancelled",
    "TaskFailed",
    "TaskNotFound",
    "TaskTimeout",
    "UnknownTask",
    "UsageError",
    "WaitTimeout",
    "Workflow",
    "WorkflowError",
    "__version__",
    "chain",
    "chord",
    "current_task",
    "group",
]

#: The version, read by setup.py from here (the one place it is written).
__version__ = "0.1.0.dev0"
