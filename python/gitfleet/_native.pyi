"""Type stubs of the native module (Rust, PyO3)."""

import os
from typing import List, Optional, Tuple, Union

__version__: str

class GitfleetError(Exception):
    """A gitfleet operation failed: the root cannot be used, or the actors are gone."""

def scrub_userinfo(text: str) -> str:
    """``text`` with the user information of every http(s) URL in it masked."""

class Session:
    """A storage root opened for work in this process: the actors and the root's lock."""

    def __init__(
        self,
        root: Union[str, "os.PathLike[str]"],
        *,
        concurrency: int = 8,
        retries: int = 3,
        username: Optional[str] = None,
        token: Optional[str] = None,
        token_urls: List[str] = ...,
    ) -> None: ...
    @property
    def root(self) -> "os.PathLike[str]": ...
    @property
    def closed(self) -> bool: ...
    def submit(self, inputs: List[str], operation: str) -> str:
        """JSON: per input ``{"input", "id"}`` or ``{"input", "error": {"code", "message"}}``."""
    def tasks_of(self, ids: List[str]) -> str:
        """JSON: the task records of ``ids`` (those that exist)."""
    def wait_final(self, ids: List[str], timeout: Optional[float] = None) -> bool:
        """True once every task of ``ids`` has ended; False at the timeout."""
    def log(self, id: str, since: Optional[str] = None, max_count: int = 20) -> str:
        """JSON: the commits of the task's repository, newest first."""
    def cancel(self, ids: List[str]) -> int:
        """Cancels these tasks; answers how many were cancelled."""
    def close(self) -> None:
        """Cancels what is unfinished, stops the actors and lets go of the root."""

class ClusterSession:
    """A gitfleet cluster's request API on NATS (the nodes do the work)."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "gitfleet",
        creds_file: Optional[Union[str, "os.PathLike[str]"]] = None,
    ) -> None: ...
    def submit(self, inputs: List[str], operation: str) -> str: ...
    def tasks_of(self, ids: List[str]) -> str: ...
    def wait_final(self, ids: List[str], timeout: Optional[float] = None) -> bool: ...
    def log(self, id: str, since: Optional[str] = None, max_count: int = 20) -> str: ...
    def cancel(self, ids: List[str]) -> int: ...
    def close(self) -> None: ...

class NativeCache:
    """A cache root (gitfleet-cache). Every method answers JSON: ``{"ok": ...}`` or
    ``{"error": {"code", "message"}}``."""

    def __init__(
        self,
        root: Union[str, "os.PathLike[str]"],
        *,
        timeout_s: float,
        max_bytes: int,
        git_config: List[Tuple[str, str]] = ...,
    ) -> None: ...
    @property
    def root(self) -> "os.PathLike[str]": ...
    def add_credentials(self, host: str, username: str, token: str) -> None: ...
    def add(self, source: str, name: Optional[str] = None) -> str: ...
    def refresh(self, name: str) -> str: ...
    def get(self, name: str) -> str: ...
    def list(self) -> str: ...
    def path(self, name: str) -> str: ...
    def remove(self, name: str) -> str: ...
    def clear(self) -> str: ...
    def stats(self) -> str: ...
