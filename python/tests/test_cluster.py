"""RepoManager(nats=...) against a real cluster: a nats-server and a `gitfleet node` process,
cloning from the real git servers."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import subprocess
import time
import urllib.parse
import urllib.request
from typing import Callable, Iterator

import pytest
from conftest import Servers, free_port, git, gitfleet_bin

from gitfleet import CloneStatus, RepoManager

NODE_ID = "py-node"
# The node's listener (dashboard, metrics, webhooks).
NODE_PORT = free_port()


@pytest.fixture(scope="module")
def node(servers: Servers, tmp_path_factory) -> Iterator[pathlib.Path]:
    """One node on the servers' nats-server; yields its root."""
    root = tmp_path_factory.mktemp("node-root")
    nats = servers.info["nats"]
    assert nats, "gitfleet-test-servers started without its nats-server"
    process = subprocess.Popen(
        [gitfleet_bin(), "--nats", nats, "--root", str(root), "node", "--node-id", NODE_ID,
         "--allow-private", "--concurrency", "2", "--retry-delay", "0.2",
         "--listen", f"127.0.0.1:{NODE_PORT}"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        env={k: v for k, v in os.environ.items() if not k.startswith("GITFLEET_")},
    )
    deadline = time.monotonic() + 60
    while True:
        out = subprocess.run(
            [gitfleet_bin(), "--nats", nats, "nodes", "--json"], capture_output=True, text=True
        )
        if out.returncode == 0 and NODE_ID in out.stdout:
            break
        assert process.poll() is None, "the node exited"
        assert time.monotonic() < deadline, f"the node never joined: {out.stderr}"
        time.sleep(0.2)
    yield root
    process.terminate()
    process.wait(timeout=60)


def test_a_cluster_clones_what_repo_manager_asks(servers: Servers, node: pathlib.Path) -> None:
    good = [servers.git("alpha.git"), servers.http("beta.git")]
    missing = servers.git("not-there.git")
    urls = [*good, missing, ""]

    async def main():
        manager = RepoManager(urls, nats=servers.info["nats"], mirror=True)
        future = manager.clone_all()
        await asyncio.wait_for(future, timeout=120)
        return await manager.fetch_clone_tasks()

    tasks = asyncio.run(main())
    for url in good:
        task = tasks[url]
        assert task.status == CloneStatus("completed"), task
        assert task.node == NODE_ID
        # The path is the node's, below its root.
        repo = node / task.temp_dir
        name = url.rsplit("/", 1)[1]
        assert git("-C", str(repo), "rev-parse", "main") == git(
            "-C", servers.upstream(name), "rev-parse", "main"
        )
    assert tasks[missing].status.status_type == "failed"
    assert tasks[missing].status.error_code == "not_found", tasks[missing]
    assert tasks[""].status.error_code == "invalid_url", tasks[""]


def test_history_and_log_come_from_the_cluster(servers: Servers, node: pathlib.Path) -> None:
    url = servers.git("alpha.git")

    async def main():
        manager = RepoManager([url], nats=servers.info["nats"], mirror=True)
        await asyncio.wait_for(manager.clone_all(), timeout=120)
        task = (await manager.fetch_clone_tasks())[url]
        return task, manager.history(url), manager.log(url, max_count=3)

    task, runs, commits = asyncio.run(main())
    # Other tests of this module may have mirrored it too: the newest run is first.
    assert runs and runs[0].status == "completed", runs
    assert runs[0].operation in ("mirror", "sync")
    repo = str(node / task.temp_dir)
    shown = git("-C", repo, "log", "--branches", "-n", "3", "--format=%H %s").splitlines()
    assert [f"{c.id} {c.subject}" for c in commits] == shown


def test_a_wait_for_a_task_the_cluster_does_not_know_ends(servers: Servers, node: pathlib.Path) -> None:
    from gitfleet import _native

    session = _native.ClusterSession(servers.info["nats"])
    try:
        started = time.monotonic()
        assert session.wait_final(["ffffffffffffffff"], timeout=30) is True
        assert time.monotonic() - started < 10
    finally:
        session.close()


def test_a_cluster_wait_reads_a_bounded_number_of_tasks_a_second(
    servers: Servers, node: pathlib.Path
) -> None:
    """clone_all() waits in short slices; whatever their number, the tasks nothing reports on
    (their host is paused) are read at most a round of 64 a second, not all of them each time."""
    import nats

    tasks_n, pause_s = 200, 6
    repos = pathlib.Path(servers.info["repos"])
    (repos / "py-copies").mkdir(exist_ok=True)
    urls = []
    for i in range(tasks_n):
        link = repos / "py-copies" / f"c{i:03}.git"
        if not link.exists():
            link.symlink_to(repos / "alpha.git")
        urls.append(servers.git(f"py-copies/c{i:03}.git"))

    async def main():
        nc = await nats.connect(servers.info["nats"])
        stamps = []

        async def on_get(msg):
            stamps.append(time.monotonic())

        await nc.subscribe("gitfleet.api.get", cb=on_get)
        pause = {"host": "127.0.0.1", "pause_secs": pause_s, "node": "node-elsewhere"}
        await nc.publish("gitfleet.control.pause", json.dumps(pause).encode())
        await nc.flush()
        manager = RepoManager(urls, nats=servers.info["nats"], mirror=True)
        started = time.monotonic()
        await asyncio.wait_for(manager.clone_all(), timeout=180)
        waited = time.monotonic() - started
        await nc.flush()
        seen = list(stamps)
        tasks = await manager.fetch_clone_tasks()
        await nc.close()
        return waited, seen, tasks

    waited, seen, tasks = asyncio.run(main())
    # The module's other tests share this node: the copies go again.
    removed = subprocess.run(
        [gitfleet_bin(), "--nats", servers.info["nats"], "remove", *urls],
        capture_output=True, text=True, timeout=120,
    )
    assert removed.returncode == 0, removed.stderr
    assert all(t.status.status_type == "completed" for t in tasks.values()), tasks
    assert waited >= pause_s, waited
    assert seen, "no task was read while nothing reported on them"
    busiest = max(sum(1 for t in seen if s <= t < s + 1) for s in seen)
    assert busiest <= 3 * 64 and busiest < tasks_n, (busiest, len(seen))
    assert len(seen) <= 64 * (int(waited) + 2), len(seen)


def test_a_cluster_takes_no_token_and_no_root(servers: Servers) -> None:
    nats = servers.info["nats"]
    with pytest.raises(ValueError, match="never sent over NATS"):
        RepoManager([servers.git("alpha.git")], "user", "token", nats=nats)
    with pytest.raises(ValueError, match="root"):
        RepoManager([servers.git("alpha.git")], root="/tmp/x", nats=nats)


def test_the_node_answers_nats_service_discovery(servers: Servers, node: pathlib.Path) -> None:
    import nats  # nats-py: any NATS client sees the nodes as a service

    async def main():
        nc = await nats.connect(servers.info["nats"])
        try:
            await nc.request("gitfleet.api.nodes", b"{}", timeout=30)
            ping = json.loads((await nc.request("$SRV.PING.gitfleet", b"", timeout=10)).data)
            stats = json.loads((await nc.request("$SRV.STATS.gitfleet", b"", timeout=10)).data)
        finally:
            await nc.close()
        return ping, stats

    ping, stats = asyncio.run(main())
    assert ping["name"] == "gitfleet" and ping["metadata"]["node"] == NODE_ID, ping
    endpoints = {e["name"]: e for e in stats["endpoints"]}
    assert {"submit", "sync", "get", "list", "cancel", "nodes"} <= set(endpoints), stats
    assert endpoints["nodes"]["num_requests"] >= 1, stats


def test_the_nodes_dashboard_shows_its_repositories_and_the_nodes_load(
    servers: Servers, node: pathlib.Path
) -> None:
    url = servers.git("beta.git")
    out = subprocess.run(
        [gitfleet_bin(), "--nats", servers.info["nats"], "mirror", url],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr

    def get(path: str) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{NODE_PORT}{path}", timeout=30) as reply:
            return json.loads(reply.read())

    summary = get("/api/summary")
    assert summary["mode"] == "node" and summary["name"] == NODE_ID, summary
    assert [n["node_id"] for n in summary["nodes"]] == [NODE_ID], summary
    assert summary["nodes"][0]["concurrency"] == 2
    assert summary["by_status"]["completed"] >= 1
    page = get("/api/tasks?" + urllib.parse.urlencode({"q": url, "status": "completed"}))
    measured = page["tasks"][0]["last_sync"]["disk_bytes"]
    assert measured > 0, page
    # `gitfleet du` over the cluster counts it, on this node.
    out = subprocess.run(
        [gitfleet_bin(), "--nats", servers.info["nats"], "du", "--json", "-n", "100"],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert url in [r["url"] for r in report["largest"]], report
    assert [n["node"] for n in report["nodes"]] == [NODE_ID], report
    assert report["total_bytes"] >= measured
    assert [t["url"] for t in page["tasks"]] == [url], page
    assert page["tasks"][0]["node"] == NODE_ID


def cluster_command(servers: Servers) -> Callable[..., "subprocess.CompletedProcess[str]"]:
    """Runs `gitfleet --nats <the servers' nats> ARGS...`, its output captured."""
    def run(*args: str) -> "subprocess.CompletedProcess[str]":
        return subprocess.run([gitfleet_bin(), "--nats", servers.info["nats"], *args],
                              capture_output=True, text=True, timeout=300)
    return run


def test_an_archived_repository_is_not_synced_in_the_cluster(
    servers: Servers, node: pathlib.Path
) -> None:
    url = servers.git("org-a/utils.git")
    gitfleet = cluster_command(servers)

    assert gitfleet("mirror", url).returncode == 0
    out = gitfleet("archive", url)
    assert out.returncode == 0 and "archived" in out.stdout, out.stderr
    record = json.loads(gitfleet("status", "--json", url).stdout)[0]
    assert record["archived"] is True and record["freshness"] == "archived", record
    assert "next_sync_at" not in record
    out = gitfleet("sync", url)
    assert out.returncode == 1 and "is archived" in out.stdout + out.stderr, out
    out = gitfleet("unarchive", url)
    assert out.returncode == 0, out.stderr
    assert gitfleet("sync", url).returncode == 0


def test_remove_deletes_a_repository_on_its_node(servers: Servers, node: pathlib.Path) -> None:
    url = servers.http("org-b/utils.git")
    gitfleet = cluster_command(servers)

    assert gitfleet("mirror", url).returncode == 0
    record = json.loads(gitfleet("status", "--json", url).stdout)[0]
    repo = node / record["path"]
    assert repo.is_dir()
    out = gitfleet("remove", url)
    assert out.returncode == 0 and "removed" in out.stdout, out.stderr
    deadline = time.monotonic() + 60
    while repo.exists():
        assert time.monotonic() < deadline, "the node never deleted the repository"
        time.sleep(0.05)
    assert gitfleet("status", url).returncode != 0
    assert url not in gitfleet("status", "--json").stdout
    # Mirrored again, it comes back whole.
    assert gitfleet("mirror", url).returncode == 0
    assert repo.is_dir()
