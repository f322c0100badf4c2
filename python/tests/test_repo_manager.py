"""RepoManager against real git servers: clones, mirrors, failures that stay alone, credentials
that never show, live progress, cancellation, and bad input."""

from __future__ import annotations

import asyncio
import os
import pathlib

import pytest
from conftest import Servers, git

import gitfleet
from gitfleet import (
    CloneStatus,
    CloneTask,
    GitfleetError,
    PydanticCloneStatus,
    RepoManager,
    to_pydantic_status,
    to_pydantic_task,
)


def run(coro):
    return asyncio.run(coro)


def test_clone_all_clones_each_url_with_a_working_tree(servers: Servers, tmp_path: pathlib.Path) -> None:
    urls = [servers.git("alpha.git"), servers.http("beta.git")]

    async def main():
        with RepoManager(urls, root=tmp_path) as manager:
            await manager.clone_all()
            return await manager.fetch_clone_tasks()

    tasks = run(main())
    assert list(tasks) == urls
    for url, task in tasks.items():
        assert task.status == CloneStatus("completed"), task
        assert task.temp_dir is not None and os.path.isdir(os.path.join(task.temp_dir, ".git"))
        name = url.rsplit("/", 1)[1]
        assert git("-C", task.temp_dir, "rev-parse", "HEAD") == git(
            "-C", servers.upstream(name), "rev-parse", "main"
        )
        # A working tree: the files of main are checked out.
        assert git("-C", task.temp_dir, "status", "--porcelain") == ""
        assert os.listdir(task.temp_dir) != [".git"]


def test_mirror_true_makes_bare_mirrors_with_every_ref(servers: Servers, tmp_path: pathlib.Path) -> None:
    url = servers.git("alpha.git")

    async def main():
        with RepoManager([url], root=tmp_path, mirror=True) as manager:
            await manager.clone_all()
            return (await manager.fetch_clone_tasks())[url]

    task = run(main())
    assert task.status.status_type == "completed", task
    assert git("-C", task.temp_dir, "rev-parse", "--is-bare-repository") == "true"
    refs = lambda path: git("-C", path, "for-each-ref", "--format=%(refname) %(objectname)")
    assert refs(task.temp_dir) == refs(servers.upstream("alpha.git"))


def test_one_bad_url_fails_alone_with_its_code(servers: Servers, tmp_path: pathlib.Path) -> None:
    good = servers.git("beta.git")
    missing = servers.git("no-such-repo.git")
    garbage = "ftp://127.0.0.1/repo.git"
    urls = [good, missing, garbage, ""]

    async def main():
        with RepoManager(urls, root=tmp_path, retries=0) as manager:
            await manager.clone_all()
            return await manager.fetch_clone_tasks()

    tasks = run(main())
    assert tasks[good].status.status_type == "completed"
    assert tasks[missing].status.status_type == "failed"
    assert tasks[missing].status.error_code == "not_found", tasks[missing]
    assert tasks[missing].status.error.startswith(missing), tasks[missing]
    assert tasks[garbage].status.error_code in ("invalid_url", "policy_denied"), tasks[garbage]
    assert tasks[""].status.error_code == "invalid_url", tasks[""]
    for bad in (garbage, ""):
        assert tasks[bad].status.status_type == "failed"
        assert tasks[bad].temp_dir is None


def test_the_token_reaches_its_host_and_never_shows(servers: Servers, tmp_path: pathlib.Path) -> None:
    url = servers.http_auth("alpha.git")
    root = tmp_path / "root"

    async def main(token):
        with RepoManager([url], servers.user, token, root=root, retries=0) as manager:
            await manager.clone_all()
            return (await manager.fetch_clone_tasks())[url]

    ok = run(main(servers.token))
    assert ok.status.status_type == "completed", ok
    wrong_token = "wr0ng-" + servers.token
    root2 = tmp_path / "root2"
    root = root2
    refused = run(main(wrong_token))
    assert refused.status.status_type == "failed"
    assert refused.status.error_code == "auth_failed", refused
    for token in (servers.token, wrong_token):
        for shown in (repr(ok), repr(refused), to_pydantic_task(refused).model_dump_json()):
            assert token not in shown
        for path in (tmp_path / "root", root2):
            for dirpath, _, files in os.walk(path):
                for f in files:
                    with open(os.path.join(dirpath, f), "rb") as fh:
                        assert token.encode() not in fh.read(), os.path.join(dirpath, f)


def test_a_token_inside_a_url_is_masked_in_every_task(servers: Servers, tmp_path: pathlib.Path) -> None:
    base = servers.info["http_auth"]
    url = base.replace("http://", f"http://{servers.user}:{servers.token}@") + "/beta.git"

    async def main():
        with RepoManager([url], root=tmp_path) as manager:
            await manager.clone_all()
            return await manager.fetch_clone_tasks()

    tasks = run(main())
    task = tasks[url]
    assert task.status.status_type == "completed", task
    assert servers.token not in task.url and servers.token not in repr(task)
    assert servers.token not in to_pydantic_task(task).model_dump_json()


def test_progress_is_live_and_never_goes_backwards(servers: Servers, tmp_path: pathlib.Path) -> None:
    url = servers.http_slow("big.git")
    seen = []

    async def main():
        with RepoManager([url], root=tmp_path) as manager:
            future = manager.clone_all()
            while not future.done():
                status = (await manager.fetch_clone_tasks())[url].status
                seen.append((status.status_type, status.progress))
                await asyncio.sleep(0.05)
            await future
            return (await manager.fetch_clone_tasks())[url]

    final = run(main())
    assert final.status.status_type == "completed", final
    cloning = [p for t, p in seen if t == "cloning"]
    # The throttled server makes this clone take seconds: it is seen while it runs.
    assert cloning, seen
    assert all(p is not None and 0 <= p <= 100 for p in cloning), seen
    assert cloning == sorted(cloning), seen
    assert all(p is None for t, p in seen if t != "cloning"), seen
    assert final.status.progress is None


def test_cancelling_clone_all_cancels_the_clones(servers: Servers, tmp_path: pathlib.Path) -> None:
    url = servers.http_slow("big.git")

    async def main():
        with RepoManager([url], root=tmp_path) as manager:
            future = manager.clone_all()
            while (await manager.fetch_clone_tasks())[url].status.status_type != "cloning":
                await asyncio.sleep(0.02)
            future.cancel()
            with pytest.raises(asyncio.CancelledError):
                await future
            for _ in range(500):
                task = (await manager.fetch_clone_tasks())[url]
                if task.status.status_type == "failed":
                    return task
                await asyncio.sleep(0.02)
            return task

    task = run(main())
    assert task.status.status_type == "failed", task
    assert task.status.error_code == "cancelled", task
    assert task.temp_dir is None
    # Nothing half-written is left where the repository would be.
    assert not any(name.endswith("big.git") for _, dirs, _ in os.walk(tmp_path) for name in dirs)


def test_wait_for_with_a_timeout_leaves_the_manager_usable(servers: Servers, tmp_path: pathlib.Path) -> None:
    slow = servers.http_slow("big.git")

    async def main():
        with RepoManager([slow], root=tmp_path) as manager:
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(manager.clone_all(), timeout=0.3)
            after_timeout = (await manager.fetch_clone_tasks())[slow]
            # Again, to the end this time.
            await manager.clone_all()
            return after_timeout, (await manager.fetch_clone_tasks())[slow]

    after_timeout, final = run(main())
    assert after_timeout.status.status_type in ("queued", "cloning", "failed"), after_timeout
    assert final.status.status_type == "completed", final


def test_history_and_log_tell_what_the_clone_brought(servers: Servers, tmp_path: pathlib.Path) -> None:
    url = servers.git("alpha.git")
    missing = servers.git("absent.git")

    async def main():
        with RepoManager([url, missing], root=tmp_path, mirror=True, retries=0) as manager:
            # Nothing submitted yet: no runs, no repository.
            assert manager.history(url) == []
            with pytest.raises(GitfleetError, match="clone_all"):
                manager.log(url)
            await manager.clone_all()
            path = (await manager.fetch_clone_tasks())[url].temp_dir
            return (
                path,
                manager.history(url),
                manager.history(missing),
                manager.log(url),
                manager.log(url, max_count=2),
                manager.log(url, since="2100-01-01T00:00:00Z"),
            )

    path, runs, failed_runs, commits, two, none = run(main())
    (ran,) = runs
    assert isinstance(ran, gitfleet.SyncRun)
    assert (ran.status, ran.operation, ran.error_code) == ("completed", "mirror", None)
    refs = git("-C", path, "for-each-ref", "--format=%(refname)").splitlines()
    assert ran.refs_created == len(refs) and (ran.refs_updated, ran.refs_deleted) == (0, 0)
    assert ran.new_commits == int(git("-C", path, "rev-list", "--all", "--count"))
    assert ran.bytes_received > 0 and ran.finished_at.endswith("Z")
    (failure,) = failed_runs
    assert (failure.status, failure.error_code) == ("failed", "not_found"), failure
    assert failure.error and "absent.git" in failure.error

    shown = git("-C", path, "log", "--branches", "--format=%H %an %ae %s").splitlines()
    assert [f"{c.id} {c.author} {c.email} {c.subject}" for c in commits] == shown[:20]
    assert all(isinstance(c, gitfleet.Commit) for c in commits)
    assert [c.id for c in two] == [c.id for c in commits[:2]]
    assert none == []


def test_history_and_log_refuse_bad_arguments(servers: Servers, tmp_path: pathlib.Path) -> None:
    url = servers.git("beta.git")

    async def main():
        with RepoManager([url], root=tmp_path, mirror=True) as manager:
            await manager.clone_all()
            with pytest.raises(ValueError, match="not one of this manager's urls"):
                manager.history(servers.git("alpha.git"))
            with pytest.raises(ValueError, match="max_count must be between 1 and 1000"):
                manager.log(url, max_count=0)
            with pytest.raises(ValueError, match="since must be an RFC 3339 time"):
                manager.log(url, since="yesterday")
            with pytest.raises(TypeError, match="max_count must be an int"):
                manager.log(url, max_count="5")  # type: ignore[arg-type]
            return len(manager.log(url, max_count=1000))

    assert run(main()) == 2


def test_fetch_before_clone_all_shows_every_url_queued(servers: Servers, tmp_path: pathlib.Path) -> None:
    urls = [servers.git("alpha.git"), servers.git("beta.git")]

    async def main():
        with RepoManager(urls, root=tmp_path) as manager:
            return await manager.fetch_clone_tasks()

    tasks = run(main())
    assert {url: t.status for url, t in tasks.items()} == {url: CloneStatus("queued") for url in urls}


def test_a_root_in_use_is_refused_clearly(servers: Servers, tmp_path: pathlib.Path) -> None:
    with RepoManager([servers.git("alpha.git")], root=tmp_path):
        with pytest.raises(GitfleetError, match="another gitfleet process is working in"):
            RepoManager([servers.git("alpha.git")], root=tmp_path)
    # Closed: the root is free again.
    RepoManager([servers.git("alpha.git")], root=tmp_path).close()


def test_the_temporary_root_is_the_managers_own(servers: Servers) -> None:
    url = servers.git("beta.git")

    async def main():
        manager = RepoManager([url])
        await manager.clone_all()
        task = (await manager.fetch_clone_tasks())[url]
        assert os.path.isdir(task.temp_dir)
        manager.close()
        return manager.root, task

    root, task = run(main())
    assert task.temp_dir.startswith(root)
    assert not os.path.exists(root)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"urls": "git://127.0.0.1/one.git"}, TypeError, "not a single string"),
        ({"urls": [1]}, TypeError, r"urls\[0\] must be a str"),
        ({"urls": None}, TypeError, "must be a list of URLs"),
        ({"urls": [], "concurrency": 0}, ValueError, "concurrency"),
        ({"urls": [], "retries": -1}, ValueError, "retries"),
        ({"urls": [], "github_token": 123}, TypeError, "github_token"),
        ({"urls": [], "mirror": "yes"}, TypeError, "mirror"),
    ],
)
def test_bad_arguments_raise_clear_python_errors(kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        RepoManager(**kwargs)


def test_clone_all_outside_an_event_loop_says_so(tmp_path: pathlib.Path) -> None:
    with RepoManager([], root=tmp_path) as manager:
        with pytest.raises(RuntimeError, match="running asyncio event loop"):
            manager.clone_all()


def test_a_root_that_cannot_be_made_is_an_error_naming_it(tmp_path: pathlib.Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(GitfleetError, match="storage root"):
        RepoManager([], root=blocker / "root")


def test_pydantic_models_validate_and_serialise() -> None:
    status = CloneStatus("failed", error="Repository not found", error_code="not_found")
    model = to_pydantic_status(status)
    assert isinstance(model, PydanticCloneStatus)
    assert '"status_type":"failed"' in model.model_dump_json()
    task = to_pydantic_task(CloneTask("https://example.invalid/r.git", status))
    assert task.status.error_code == "not_found"
    with pytest.raises(TypeError):
        to_pydantic_status("failed")
    with pytest.raises(ValueError):
        PydanticCloneStatus(status_type="cloning", progress=101)


def test_the_documents_spelling_imports_the_same_names() -> None:
    import GitFleet

    assert GitFleet.RepoManager is gitfleet.RepoManager
    assert GitFleet.to_pydantic_status is gitfleet.to_pydantic_status
    assert GitFleet.RustCloneStatus is gitfleet.CloneStatus
