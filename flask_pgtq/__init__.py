"""flask_pgtq: a background task queue for Flask on PostgreSQL alone."""

from __future__ import annotations

from .exceptions import ArgumentsNotSerializable as ArgumentsNotSerializable
from .exceptions import Cancel as Cancel
from .exceptions import ConfigurationError as ConfigurationError
from .exceptions import DatabaseError as DatabaseError
from .exceptions import DatabaseUnavailable as DatabaseUnavailable
from .exceptions import DuplicateHandler as DuplicateHandler
from .exceptions import InvalidName as InvalidName
from .exceptions import NotClaimed as NotClaimed
from .exceptions import PayloadTooLarge as PayloadTooLarge
from .exceptions import PgTqError as PgTqError
from .exceptions import Retry as Retry
from .exceptions import SchemaNotReady as SchemaNotReady
from .exceptions import TaskFailed as TaskFailed
from .exceptions import TaskNotFound as TaskNotFound
from .exceptions import UnknownTask as UnknownTask
from .exceptions import WaitTimeout as WaitTimeout
from .extension import PgTq as PgTq
from .handler import Args as Args
from .handler import Handler as Handler
from .runner import current_task as current_task
from .task import State as State
from .task import Task as Task

__version__ = "0.1.0.dev0"
