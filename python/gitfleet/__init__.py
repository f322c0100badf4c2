"""gitfleet: clone, mirror and keep fresh many git repositories, on gitfleet's Rust engine.

``RepoManager`` clones a list of repositories and reports each one's ``CloneTask`` /
``CloneStatus``; ``to_pydantic_status`` / ``to_pydantic_task`` give pydantic models of them.
``GitCacheManager`` keeps a cache of repositories and directories by name.
See docs/python.md.
"""

from ._native import GitfleetError, __version__
from .cache import (
    CacheStatus,
    CacheType,
    GitCacheConfig,
    GitCacheEntry,
    GitCacheError,
    GitCacheManager,
)
from .manager import (
    CloneStatus,
    CloneTask,
    Commit,
    RepoManager,
    RustCloneStatus,
    RustCloneTask,
    SyncRun,
)
from .models import (
    PydanticCloneStatus,
    PydanticCloneTask,
    to_pydantic_status,
    to_pydantic_task,
)

__all__ = [
    "CacheStatus",
    "CacheType",
    "CloneStatus",
    "CloneTask",
    "Commit",
    "GitCacheConfig",
    "GitCacheEntry",
    "GitCacheError",
    "GitCacheManager",
    "GitfleetError",
    "PydanticCloneStatus",
    "PydanticCloneTask",
    "RepoManager",
    "RustCloneStatus",
    "RustCloneTask",
    "SyncRun",
    "__version__",
    "to_pydantic_status",
    "to_pydantic_task",
]
