"""``RepoManager``: clone or mirror a list of repositories and watch each one's status.

The work is done by gitfleet's Rust engine and actors (``gitfleet._native``) on a storage root:
the same task records, identity rules, limits and retries as the ``gitfleet`` command line.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
import time
import weakref
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Dict, Iterable, List, Optional, Set, Tuple, Union

from . import _native
from ._native import GitfleetError

#: How long one wait for the actors lasts before the asyncio task looks again (and can be
#: cancelled): the executor thread it runs on is busy at most this long after a cancel.
_WAIT_SLICE_S = 0.2

#: How long a new ``clone_all()`` waits for clones cancelled before to stop.
_SETTLE_S = 10.0

StatusType = str  # "queued" | "cloning" | "completed" | "failed"
_FINAL = ("completed", "failed")


@dataclass(frozen=True)
class CloneStatus:
    """Where one repository's clone stands.

    ``status_type`` is ``"queued"``, ``"cloning"``, ``"completed"`` or ``"failed"``;
    ``progress`` is 0-100 while cloning (never going backwards) and None otherwise; ``error``
    says why it failed, and ``error_code`` is the stable code of that failure (``not_found``,
    ``auth_failed``, ``invalid_url``, ``network``, ...), None unless failed.
    """

    status_type: StatusType
    progress: Optional[int] = None
    error: Optional[str] = None
    error_code: Optional[str] = None


@dataclass(frozen=True)
class CloneTask:
    """One repository of a ``RepoManager``: its URL, its status, and where it is once cloned.

    ``url`` never carries a password or token (user information of http(s) URLs is masked);
    ``temp_dir`` is the repository's directory once completed, None before (with a cluster:
    its path below the root of ``node``, the node that holds it); ``id`` is gitfleet's task id
    (what ``gitfleet status`` shows), None until submitted.
    """

    url: str
    status: CloneStatus
    temp_dir: Optional[str] = None
    id: Optional[str] = None
    node: Optional[str] = None


@dataclass(frozen=True)
class SyncRun:
    """One finished run of a repository's clone or sync (``RepoManager.history``): when it
    ended (RFC 3339, UTC), ``operation`` (``mirror``, ``checkout``, ``sync``, ...), ``status``
    (``completed`` or ``failed``, then ``error_code`` and ``error`` say why), the refs it
    created, updated and deleted, the commits it brought (``new_commits``), the bytes it
    received and how long it took."""

    finished_at: str
    operation: str
    status: str
    error_code: Optional[str] = None
    error: Optional[str] = None
    refs_created: int = 0
    refs_updated: int = 0
    refs_deleted: int = 0
    new_commits: int = 0
    bytes_received: int = 0
    duration_ms: int = 0


@dataclass(frozen=True)
class Commit:
    """A commit a repository holds (``RepoManager.log``): its id, author and email (as the
    commit names them, cut at 256 characters), when it was authored (RFC 3339) and the first
    line of its message."""

    id: str
    author: str
    email: str
    time: str
    subject: str


_RUN_FIELDS = tuple(SyncRun.__dataclass_fields__)
_COMMIT_FIELDS = tuple(Commit.__dataclass_fields__)


#: The names the product documents use for the classes ``fetch_clone_tasks`` returns.
RustCloneStatus = CloneStatus
RustCloneTask = CloneTask


def _until(record: Dict[str, Any]) -> float:
    """Until when a final record stays true: its next scheduled sync (forever without one)."""
    at = record.get("next_sync_at")
    if not at:
        return float("inf")
    try:
        return datetime.fromisoformat(at.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def _url_list(urls: Any) -> List[str]:
    if isinstance(urls, (str, bytes)):
        raise TypeError("urls must be a list of URLs, not a single string")
    try:
        items = list(urls)
    except TypeError:
        raise TypeError(
            f"urls must be a list of URLs, not {type(urls).__name__}"
        ) from None
    for i, url in enumerate(items):
        if not isinstance(url, str):
            raise TypeError(f"urls[{i}] must be a str, not {type(url).__name__}")
    return items


def _optional_str(name: str, value: Any) -> Optional[str]:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{name} must be a str or None, not {type(value).__name__}")
    return value


def _close(session: Any, owned_root: Optional[str]) -> None:
    try:
        session.close()
    finally:
        if owned_root is not None:
            shutil.rmtree(owned_root, ignore_errors=True)


class RepoManager:
    """Clones (or mirrors) ``urls`` with gitfleet, and reports each one's status.

    ``github_username`` / ``github_token``: credentials offered only to the hosts of ``urls``
    (never to a host a redirect or another URL names). Repositories go under ``root``; without
    one, under a temporary directory that the manager owns and removes when it is closed (or
    garbage-collected). ``mirror=True`` makes bare mirrors instead of working-tree clones.
    ``concurrency`` transfers run at once; ``retries`` transient failures are tried again.

    ``nats="nats://host:4222"`` drives a gitfleet cluster instead (subjects under
    ``nats_prefix``; credentials in the URL or a ``nats_creds`` file): the nodes clone with
    their own roots, concurrency, retries and credentials, so ``root``, ``github_token``,
    ``concurrency`` and ``retries`` do not apply there.

    One bad URL fails alone: its task is ``failed`` with the reason, the others go on.
    """

    def __init__(
        self,
        urls: Iterable[str],
        github_username: Optional[str] = None,
        github_token: Optional[str] = None,
        *,
        root: Union[str, "os.PathLike[str]", None] = None,
        nats: Optional[str] = None,
        concurrency: int = 8,
        mirror: bool = False,
        retries: int = 3,
        nats_prefix: str = "gitfleet",
        nats_creds: Union[str, "os.PathLike[str]", None] = None,
    ) -> None:
        self._urls = _url_list(urls)
        username = _optional_str("github_username", github_username)
        token = _optional_str("github_token", github_token)
        if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
            raise ValueError(f"concurrency must be a positive int, not {concurrency!r}")
        if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
            raise ValueError(f"retries must be a non-negative int, not {retries!r}")
        if not isinstance(mirror, bool):
            raise TypeError(f"mirror must be a bool, not {type(mirror).__name__}")
        self._operation = "mirror" if mirror else "clone"
        owned_root: Optional[str] = None
        self._root: Optional[str] = None
        if nats is not None:
            if not isinstance(nats, str):
                raise TypeError(f"nats must be a URL (str), not {type(nats).__name__}")
            if root is not None:
                raise ValueError("root is the nodes' with nats=...: leave it unset")
            if token is not None:
                raise ValueError(
                    "with nats=..., the nodes use their own credentials (GITFLEET_TOKEN or "
                    "--credentials on each node); a token is never sent over NATS"
                )
            self._session: Union[_native.Session, _native.ClusterSession] = _native.ClusterSession(
                nats,
                prefix=nats_prefix,
                creds_file=None if nats_creds is None else os.fspath(nats_creds),
            )
        else:
            if root is None:
                owned_root = tempfile.mkdtemp(prefix="gitfleet-")
                root_path = owned_root
            else:
                root_path = os.fspath(root)
                if not isinstance(root_path, str):
                    raise TypeError("root must be a str or os.PathLike[str]")
            try:
                embedded = _native.Session(
                    root_path,
                    concurrency=concurrency,
                    retries=retries,
                    username=username,
                    token=token,
                    token_urls=self._urls,
                )
            except BaseException:
                if owned_root is not None:
                    shutil.rmtree(owned_root, ignore_errors=True)
                raise
            self._session = embedded
            self._root = os.fspath(embedded.root)
        self._finalizer = weakref.finalize(self, _close, self._session, owned_root)
        # url -> task id, or (code, message) for a URL refused before any transfer.
        self._ids: Dict[str, str] = {}
        self._refused: Dict[str, Tuple[str, str]] = {}
        # task id -> its record once final, until submitted again or due for a sync (a
        # cluster's nodes sync what they hold on a schedule), with that time.
        self._final: Dict[str, Tuple[Dict[str, Any], float]] = {}
        # Submits so far: a record read while a submit was under way is not kept.
        self._submits = 0
        # task id -> highest progress seen while the task is unfinished.
        self._progress: Dict[str, int] = {}
        # Task ids cancelled and maybe still stopping.
        self._cancelling: Set[str] = set()
        # clone_all() calls so far.
        self._runs = 0

    @property
    def root(self) -> Optional[str]:
        """The storage root the repositories go under (None with a cluster: the nodes')."""
        return self._root

    @property
    def urls(self) -> List[str]:
        """The URLs, as given."""
        return list(self._urls)

    def clone_all(self) -> "asyncio.Task[None]":
        """Starts cloning every URL and returns an asyncio task that ends when all are done.

        Call it from async code (it needs the running event loop). The returned task has
        ``.done()``; await it (``asyncio.wait_for`` works too). Cancelling it cancels the
        clones still queued or running. It does not raise for a failed repository: see
        ``fetch_clone_tasks()``.
        """
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                "clone_all() needs a running asyncio event loop: call it from async code"
            ) from None
        self._settle_cancelled()
        self._submit()
        self._runs += 1
        run = self._runs
        task = loop.create_task(self._wait_all())
        # A callback, not an except clause: a task cancelled before it first ran never enters
        # its coroutine. Only the latest run's cancellation cancels clones (a newer run has
        # taken them over).
        task.add_done_callback(
            lambda done: self._cancel_if_cancelled(done) if run == self._runs else None
        )
        return task

    def _submit(self) -> None:
        self._submits += 1
        answers = json.loads(self._session.submit(self._urls, self._operation))
        # One answer per URL, in order (a cluster's answer names the URL masked).
        for url, answer in zip(self._urls, answers):
            if "id" in answer:
                self._ids[url] = answer["id"]
                self._final.pop(answer["id"], None)
                self._refused.pop(url, None)
            else:
                error = answer["error"]
                self._refused[url] = (error["code"], error["message"])

    async def _wait_all(self) -> None:
        loop = asyncio.get_running_loop()
        ids = sorted(set(self._ids.values()))
        while not await loop.run_in_executor(
            None, self._session.wait_final, ids, _WAIT_SLICE_S
        ):
            pass

    def _cancel_if_cancelled(self, task: "asyncio.Task[None]") -> None:
        if task.cancelled() and not self.closed:
            self.cancel()

    def _settle_cancelled(self) -> None:
        """Waits (briefly) until the clones cancelled earlier have stopped: submitted again while
        still stopping, they would only finish as cancelled."""
        deadline = time.monotonic() + _SETTLE_S
        pause = 0.01
        while self._cancelling and time.monotonic() < deadline:
            records = self._records(sorted(self._cancelling))
            self._cancelling = {
                i
                for i in self._cancelling
                if i in records and records[i]["status"]["status_type"] not in _FINAL
            }
            if self._cancelling:
                time.sleep(pause)
                # Growing: with a cluster each look is a request per task.
                pause = min(pause * 2, 0.5)
        self._cancelling.clear()

    async def fetch_clone_tasks(self) -> Dict[str, CloneTask]:
        """Every URL (as given) with its current ``CloneTask`` (read on a worker thread: with
        a cluster it is a round trip)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self.clone_tasks)

    def clone_tasks(self) -> Dict[str, CloneTask]:
        """``fetch_clone_tasks()`` without awaiting: every URL with its current task."""
        records = self._records(sorted(set(self._ids.values())))
        out: Dict[str, CloneTask] = {}
        for url in self._urls:
            shown = _native.scrub_userinfo(url)
            refused = self._refused.get(url)
            task_id = self._ids.get(url)
            record = records.get(task_id) if task_id is not None else None
            if refused is not None:
                code, message = refused
                status = CloneStatus("failed", error=message, error_code=code)
                out[url] = CloneTask(shown, status)
            elif record is None:
                out[url] = CloneTask(shown, CloneStatus("queued"), id=task_id)
            else:
                out[url] = self._task_of(shown, record)
        return out

    def _records(self, ids: List[str]) -> Dict[str, Dict[str, Any]]:
        """The records of ``ids``: a final one is kept and not read again until its URL is
        submitted again (with a cluster every read is a request: polling thousands of
        finished tasks would compete with the work)."""
        now = time.time()
        kept = {i: r for i, (r, until) in self._final.items() if until > now}
        wanted = [i for i in ids if i not in kept]
        submits = self._submits
        fresh = self._read(wanted) if wanted else {}
        for task_id, record in fresh.items():
            if record["status"]["status_type"] in _FINAL and submits == self._submits:
                self._final[task_id] = (record, _until(record))
        return {i: kept.get(i) or fresh[i] for i in ids if i in kept or i in fresh}

    def _read(self, ids: List[str]) -> Dict[str, Dict[str, Any]]:
        return {t["id"]: t for t in json.loads(self._session.tasks_of(ids))}

    def _task_of(self, shown_url: str, record: Dict[str, Any]) -> CloneTask:
        status = record["status"]
        status_type = status["status_type"]
        progress = None
        if status_type == "cloning":
            seen = max(self._progress.get(record["id"], 0), status.get("progress") or 0)
            self._progress[record["id"]] = seen
            progress = seen
        elif status_type in _FINAL:
            self._progress.pop(record["id"], None)
        error = status.get("error") if status_type == "failed" else None
        code = record.get("error_code") if status_type == "failed" else None
        temp_dir = None
        if status_type == "completed":
            # Embedded: a local path. A cluster's node reports the path below its own root.
            temp_dir = record["path"]
            if self._root is not None:
                temp_dir = os.path.join(self._root, temp_dir)
        return CloneTask(
            shown_url,
            CloneStatus(status_type, progress, error, code),
            temp_dir,
            record["id"],
            record.get("node") if self._root is None else None,
        )

    def history(self, url: str) -> List[SyncRun]:
        """The last runs (at most ten) of ``url``'s clone and the syncs after it, newest first:
        what each brought or why it failed. Empty before the first run has ended, and for a
        URL refused before any transfer or before ``clone_all()``. ``url`` is one of
        ``urls``, as given."""
        task_id = self._id_of(url)
        if task_id is None:
            return []
        record = self._read([task_id]).get(task_id) or {}
        return [
            SyncRun(**{k: v for k, v in run.items() if k in _RUN_FIELDS})
            for run in record.get("history") or []
        ]

    def log(
        self, url: str, *, since: Optional[str] = None, max_count: int = 20
    ) -> List[Commit]:
        """The commits ``url``'s repository holds, newest first (every branch; at most
        ``max_count``, 1 to 1,000; only those committed since ``since``, an RFC 3339 time such
        as ``"2026-01-31T00:00:00Z"``): what the last syncs brought. Read from the repository
        itself (with a cluster, by the node that holds it). Raises ``GitfleetError`` when
        there is no repository yet (before ``clone_all()``, refused, or not cloned)."""
        task_id = self._id_of(url)
        if task_id is None:
            why = "it was refused" if url in self._refused else "clone_all() has not run"
            raise GitfleetError(f"{_native.scrub_userinfo(url)} has no repository: {why}")
        if not isinstance(max_count, int) or isinstance(max_count, bool):
            raise TypeError(f"max_count must be an int, not {type(max_count).__name__}")
        if not 1 <= max_count <= 1000:
            raise ValueError(f"max_count must be between 1 and 1000, not {max_count}")
        since = _optional_str("since", since)
        commits = json.loads(self._session.log(task_id, since, max_count))
        return [Commit(**{k: v for k, v in c.items() if k in _COMMIT_FIELDS}) for c in commits]

    def _id_of(self, url: str) -> Optional[str]:
        """The task id of one of this manager's URLs; None before ``clone_all()`` and for a URL
        refused before any transfer."""
        if not isinstance(url, str):
            raise TypeError(f"url must be a str, not {type(url).__name__}")
        if url not in self._urls:
            raise ValueError(f"{_native.scrub_userinfo(url)!r} is not one of this manager's urls")
        return self._ids.get(url)

    def cancel(self) -> int:
        """Cancels every clone of this manager still queued or running; returns how many."""
        ids = sorted(set(self._ids.values()))
        self._cancelling.update(ids)
        return self._session.cancel(ids)

    def close(self) -> None:
        """Stops the actors (unfinished clones are cancelled) and removes the temporary root if
        the manager made one. Closing twice does nothing."""
        self._finalizer()

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def __enter__(self) -> "RepoManager":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> "RepoManager":
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        where = f"root={self._root!r}" if self._root is not None else "cluster"
        return f"RepoManager({len(self._urls)} URL(s), {where}, operation={self._operation!r})"
