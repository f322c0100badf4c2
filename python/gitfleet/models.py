"""Pydantic (v2) versions of ``CloneStatus`` and ``CloneTask``, for validation and JSON."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from .manager import CloneStatus, CloneTask


class PydanticCloneStatus(BaseModel):
    """``CloneStatus`` as a pydantic model (``model_dump_json()``, validation)."""

    model_config = ConfigDict(frozen=True)

    status_type: Literal["queued", "cloning", "completed", "failed"]
    progress: Optional[int] = Field(default=None, ge=0, le=100)
    error: Optional[str] = None
    error_code: Optional[str] = None


class PydanticCloneTask(BaseModel):
    """``CloneTask`` as a pydantic model."""

    model_config = ConfigDict(frozen=True)

    url: str
    status: PydanticCloneStatus
    temp_dir: Optional[str] = None
    id: Optional[str] = None
    node: Optional[str] = None


def to_pydantic_status(status: CloneStatus) -> PydanticCloneStatus:
    """The pydantic model of a ``CloneStatus``."""
    if not isinstance(status, CloneStatus):
        raise TypeError(f"expected a CloneStatus, not {type(status).__name__}")
    return PydanticCloneStatus(
        status_type=status.status_type,  # type: ignore[arg-type]
        progress=status.progress,
        error=status.error,
        error_code=status.error_code,
    )


def to_pydantic_task(task: CloneTask) -> PydanticCloneTask:
    """The pydantic model of a ``CloneTask``."""
    if not isinstance(task, CloneTask):
        raise TypeError(f"expected a CloneTask, not {type(task).__name__}")
    return PydanticCloneTask(
        url=task.url,
        status=to_pydantic_status(task.status),
        temp_dir=task.temp_dir,
        id=task.id,
        node=task.node,
    )
