"""The git cache manager of the product documents (git-cache-management.md), on gitfleet-cache.

The cache lives in Rust (``crates/gitfleet-cache``, shared with ``gitfleet cache``); this module
is its Python face. As the documents say, every operation returns its result or an
``Exception`` (a ``GitCacheError`` with a stable ``code``); it does not raise for a failed
operation.
"""

from __future__ import annotations

import asyncio
import enum
import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any, Dict, List, Optional, Union
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, field_validator

from . import _native

PathLike = Union[str, "os.PathLike[str]"]


class GitCacheError(Exception):
    """A cache operation that failed. ``code`` is stable: ``not_found`` (the repository, or
    the entry), ``auth_failed``, ``name_clash``, ``invalid_name``, ``invalid_source``,
    ``missing``, ``network``, ``storage``, ...; the message says what happened
    ("Repository not found: ...", "Authentication failed: ...")."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


class CacheStatus(str, enum.Enum):
    """FRESH: within the timeout. STALE: older. MISSING: the files are gone. ERROR: the last
    operation failed (a copy made before, if any, is kept)."""

    FRESH = "FRESH"
    STALE = "STALE"
    MISSING = "MISSING"
    ERROR = "ERROR"

    def __str__(self) -> str:
        return self.value


class CacheType(str, enum.Enum):
    GIT = "git"
    LOCAL = "local"

    def __str__(self) -> str:
        return self.value


class GitCacheConfig(BaseModel):
    """Where the cache is and how it behaves. ``git_config`` entries are written into every
    cached git repository's config (for the tools that open it; gitfleet's own transfers never
    read a repository's config). ``provider_config`` maps a host to ``{"username", "token"}``,
    as ``register_provider`` does; it never shows in a repr, a dump or a validation error."""

    # Validation errors would quote the input, tokens included.
    model_config = ConfigDict(frozen=True, hide_input_in_errors=True)

    cache_root: Path = Path("./.metagit/.cache")
    default_timeout_minutes: int = Field(default=60, ge=0)
    max_cache_size_gb: float = Field(default=10.0, gt=0)
    enable_async: bool = True
    git_config: Dict[str, str] = Field(default_factory=dict)
    provider_config: Optional[Dict[str, Dict[str, str]]] = Field(
        default=None, repr=False, exclude=True
    )

    def __init__(self, cache_root: Optional[PathLike] = None, /, **data: Any) -> None:
        if cache_root is not None:
            data["cache_root"] = cache_root
        super().__init__(**data)

    @field_validator("provider_config")
    @classmethod
    def _tokens_given(
        cls, value: Optional[Dict[str, Dict[str, str]]]
    ) -> Optional[Dict[str, Dict[str, str]]]:
        for host, settings in (value or {}).items():
            if not settings.get("token"):
                raise ValueError(f"provider_config[{host!r}] needs a token")
        return value


class GitCacheEntry(BaseModel):
    """One cached repository or directory."""

    model_config = ConfigDict(frozen=True)

    name: str
    source: str
    cache_path: Path
    cache_type: CacheType
    status: CacheStatus
    created_at: datetime
    last_updated: Optional[datetime] = None
    last_used: datetime
    size_bytes: int
    error: Optional[str] = None
    error_code: Optional[str] = None


def _entry(record: Dict[str, Any]) -> GitCacheEntry:
    return GitCacheEntry(
        name=record["name"],
        source=record["source"],
        cache_path=Path(record["cache_path"]),
        cache_type=CacheType(record["cache_type"]),
        status=CacheStatus(record["status"]),
        created_at=record["created_at"],
        last_updated=record.get("last_updated"),
        last_used=record["last_used"],
        size_bytes=record["size_bytes"],
        error=record.get("error"),
        error_code=record.get("error_code"),
    )


def _result(answer: str) -> Any:
    """The ``ok`` of a native answer, or the ``GitCacheError`` of its ``error``."""
    parsed = json.loads(answer)
    if "error" in parsed:
        return GitCacheError(parsed["error"]["message"], parsed["error"]["code"])
    return parsed["ok"]


def _check_name(name: Any) -> Optional[Exception]:
    if not isinstance(name, str):
        return TypeError(f"name must be a str, not {type(name).__name__}")
    return None


class GitCacheManager:
    """Caches git repositories (working-tree clones, refreshed when STALE) and local
    directories (copied) under ``config.cache_root``, by name. The index is kept under the
    root (``.gitfleet-cache/``) and shared safely by every process using the same root."""

    def __init__(self, config: GitCacheConfig) -> None:
        if not isinstance(config, GitCacheConfig):
            raise TypeError(f"config must be a GitCacheConfig, not {type(config).__name__}")
        self.config = config
        self._native = _native.NativeCache(
            os.fspath(config.cache_root),
            timeout_s=config.default_timeout_minutes * 60.0,
            max_bytes=int(config.max_cache_size_gb * 1024**3),
            git_config=list(config.git_config.items()),
        )
        for host, settings in (config.provider_config or {}).items():
            self._native.add_credentials(
                host, settings.get("username") or "git", settings["token"]
            )

    @property
    def cache_root(self) -> Path:
        return Path(self._native.root)

    def register_provider(
        self,
        provider: Any = None,
        *,
        host: Optional[str] = None,
        username: Optional[str] = None,
        token: Optional[str] = None,
    ) -> Union[bool, Exception]:
        """Credentials for a host's git sources: ``host=``/``token=`` (``username`` defaults
        to ``git``), or a provider object with ``api_token`` (or ``token``) and ``host`` (or
        ``base_url``; a GitHub provider defaults to github.com). Kept in memory only."""
        if provider is not None:
            token = token or getattr(provider, "api_token", None) or getattr(provider, "token", None)
            username = username or getattr(provider, "username", None)
            host = host or getattr(provider, "host", None)
            base_url = getattr(provider, "base_url", None)
            if host is None and isinstance(base_url, str):
                host = urlparse(base_url).hostname
            if host is None and "github" in type(provider).__name__.lower():
                host = "github.com"
        if not isinstance(host, str) or not host:
            return ValueError("register_provider needs the provider's host")
        if not isinstance(token, str) or not token:
            return ValueError(f"register_provider needs a token for {host}")
        self._native.add_credentials(host, username or "git", token)
        return True

    def cache_repository(
        self, url_or_path: PathLike, name: Optional[str] = None
    ) -> Union[GitCacheEntry, Exception]:
        """Caches a git URL or a local directory as ``name`` (default: its last path segment);
        an entry already there is returned, refreshed first when it is not FRESH."""
        try:
            source = os.fspath(url_or_path)
        except TypeError:
            return TypeError(
                f"url_or_path must be a str or a path, not {type(url_or_path).__name__}"
            )
        if not isinstance(source, str):
            return TypeError("url_or_path must be text")
        if name is not None and (bad := _check_name(name)):
            return bad
        result = _result(self._native.add(source, name))
        return result if isinstance(result, Exception) else _entry(result)

    async def cache_repository_async(
        self, url_or_path: PathLike, name: Optional[str] = None
    ) -> Union[GitCacheEntry, Exception]:
        """``cache_repository`` on a worker thread: several run side by side."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self.cache_repository, url_or_path, name)

    def list_cache_entries(self) -> Union[List[GitCacheEntry], Exception]:
        result = _result(self._native.list())
        return result if isinstance(result, Exception) else [_entry(r) for r in result]

    def get_cache_entry(self, name: str) -> Union[GitCacheEntry, Exception]:
        if bad := _check_name(name):
            return bad
        result = _result(self._native.get(name))
        return result if isinstance(result, Exception) else _entry(result)

    def get_cached_repository(self, name: str) -> Union[Path, Exception]:
        """The path of the entry's copy (it counts as used: eviction keeps it longer)."""
        if bad := _check_name(name):
            return bad
        result = _result(self._native.path(name))
        return result if isinstance(result, Exception) else Path(result)

    def refresh_cache_entry(self, name: str) -> Union[GitCacheEntry, Exception]:
        """Fetches (re-clones when upstream moved) or re-copies; a failure keeps the previous
        copy and marks the entry ERROR."""
        if bad := _check_name(name):
            return bad
        result = _result(self._native.refresh(name))
        return result if isinstance(result, Exception) else _entry(result)

    async def refresh_cache_entry_async(self, name: str) -> Union[GitCacheEntry, Exception]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self.refresh_cache_entry, name)

    def remove_cache_entry(self, name: str) -> Union[bool, Exception]:
        if bad := _check_name(name):
            return bad
        result = _result(self._native.remove(name))
        return result if isinstance(result, Exception) else True

    def clear_cache(self) -> Union[bool, Exception]:
        result = _result(self._native.clear())
        return result if isinstance(result, Exception) else True

    def get_cache_stats(self) -> Union[Dict[str, Any], Exception]:
        """``total_entries``, ``total_size_bytes``, ``total_size_gb``, ``max_size_bytes``,
        ``by_status`` (FRESH/STALE/MISSING/ERROR counts) and ``by_type`` (git/local)."""
        result = _result(self._native.stats())
        if isinstance(result, Exception):
            return result
        stats: Dict[str, Any] = dict(result)
        stats["cache_root"] = str(self.cache_root)
        return stats
