"""Where saga and step state lives: SQL tables through SQLAlchemy Core."""

from .migrations import current_version, upgrade
from .schema import SCHEMA_VERSION, metadata
from .sql import (
    Claim,
    ClaimOutcome,
    Completion,
    EncodedJSON,
    FailureRecord,
    Join,
    SagaStore,
    make_engine,
    utcnow,
)

__all__ = [
    "SCHEMA_VERSION",
    "Claim",
    "ClaimOutcome",
    "Completion",
    "EncodedJSON",
    "FailureRecord",
    "Join",
    "SagaStore",
    "current_version",
    "make_engine",
    "metadata",
    "upgrade",
    "utcnow",
]
