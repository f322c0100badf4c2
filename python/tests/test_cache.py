"""GitCacheManager against real git servers and real directories, and the cache document's
examples (git-cache-management.md) with their URLs and paths changed."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import subprocess
import sys

import pytest
from conftest import Servers, git
from pydantic import ValidationError

from gitfleet import (
    CacheStatus,
    CacheType,
    GitCacheConfig,
    GitCacheEntry,
    GitCacheError,
    GitCacheManager,
)


def manager_at(root: pathlib.Path, **config) -> GitCacheManager:
    return GitCacheManager(GitCacheConfig(root, **config))


def test_a_git_repository_is_cached_fresh_and_found_again(servers: Servers, tmp_path) -> None:
    manager = manager_at(tmp_path / "cache")
    entry = manager.cache_repository(servers.git("alpha.git"))
    assert isinstance(entry, GitCacheEntry), entry
    assert (entry.name, entry.cache_type, entry.status) == ("alpha", CacheType.GIT, CacheStatus.FRESH)
    assert git("-C", str(entry.cache_path), "rev-parse", "HEAD") == git(
        "-C", servers.upstream("alpha.git"), "rev-parse", "main"
    )
    assert manager.get_cached_repository("alpha") == entry.cache_path
    assert [e.name for e in manager.list_cache_entries()] == ["alpha"]
    stats = manager.get_cache_stats()
    assert stats["total_entries"] == 1 and stats["by_status"]["FRESH"] == 1
    assert stats["by_type"] == {"git": 1, "local": 0}
    assert stats["total_size_bytes"] == entry.size_bytes > 0
    # The index outlives the manager (the original lost it between runs).
    again = manager_at(tmp_path / "cache")
    assert again.get_cache_entry("alpha").source == servers.git("alpha.git")


def test_colliding_default_names_are_an_error_naming_the_clash(servers: Servers, tmp_path) -> None:
    manager = manager_at(tmp_path / "cache")
    a, b = servers.git("org-a/utils.git"), servers.git("org-b/utils.git")
    assert isinstance(manager.cache_repository(a), GitCacheEntry)
    clash = manager.cache_repository(b)
    assert isinstance(clash, GitCacheError) and clash.code == "name_clash"
    assert a in str(clash) and b in str(clash)
    assert manager.get_cache_entry("utils").source == a
    named = manager.cache_repository(b, name="utils-b")
    assert isinstance(named, GitCacheEntry) and named.source == b


def test_failures_are_returned_with_the_documents_words(servers: Servers, tmp_path) -> None:
    manager = manager_at(tmp_path / "cache")
    missing = manager.cache_repository(servers.git("nope.git"))
    assert isinstance(missing, Exception) and "Repository not found" in str(missing)
    assert manager.get_cache_entry("nope").status == CacheStatus.ERROR
    denied = manager.cache_repository(servers.http_auth("beta.git"), name="private-beta")
    assert isinstance(denied, Exception) and "Authentication failed" in str(denied)
    assert manager.register_provider(host="127.0.0.1", username=servers.user, token=servers.token)
    ok = manager.refresh_cache_entry("private-beta")
    assert isinstance(ok, GitCacheEntry) and ok.status == CacheStatus.FRESH, ok
    for dirpath, _, files in os.walk(tmp_path):
        for f in files:
            with open(os.path.join(dirpath, f), "rb") as fh:
                assert servers.token.encode() not in fh.read(), f
    assert isinstance(manager.get_cached_repository("absent"), GitCacheError)
    assert manager.remove_cache_entry("absent").code == "not_found"


def test_a_stale_entry_is_refreshed_to_upstream(servers: Servers, tmp_path) -> None:
    manager = manager_at(tmp_path / "cache", default_timeout_minutes=0)
    first = manager.cache_repository(servers.git("alpha.git"), name="alpha-stale")
    assert manager.get_cache_entry("alpha-stale").status == CacheStatus.STALE
    servers.mutate("alpha.git")
    refreshed = manager.cache_repository(servers.git("alpha.git"), name="alpha-stale")
    assert isinstance(refreshed, GitCacheEntry), refreshed
    head = git("-C", str(refreshed.cache_path), "rev-parse", "HEAD")
    assert head == git("-C", servers.upstream("alpha.git"), "rev-parse", "main")
    assert refreshed.last_updated > first.last_updated


def test_a_local_directory_is_copied_and_a_failed_refresh_keeps_it(tmp_path) -> None:
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "src" / "app.txt").write_text("v1")
    manager = manager_at(tmp_path / "cache")
    entry = manager.cache_repository(project, name="my-project")
    assert entry.cache_type == CacheType.LOCAL
    assert (entry.cache_path / "src" / "app.txt").read_text() == "v1"
    (project / "src" / "app.txt").write_text("v2")
    assert (manager.refresh_cache_entry("my-project").cache_path / "src" / "app.txt").read_text() == "v2"
    # The source disappears: the refresh fails, the previous copy stays.
    (project / "src" / "app.txt").unlink()
    (project / "src").rmdir()
    project.rmdir()
    failed = manager.refresh_cache_entry("my-project")
    assert isinstance(failed, GitCacheError), failed
    kept = manager.get_cache_entry("my-project")
    assert kept.status == CacheStatus.ERROR and kept.error
    assert (kept.cache_path / "src" / "app.txt").read_text() == "v2"


def test_the_size_limit_evicts_least_recently_used(servers: Servers, tmp_path) -> None:
    manager = manager_at(tmp_path / "cache", max_cache_size_gb=1e-9)
    manager.cache_repository(servers.git("beta.git"))
    newest = manager.cache_repository(servers.git("org-a/utils.git"))
    assert [e.name for e in manager.list_cache_entries()] == ["utils"]
    assert newest.cache_path.is_dir()


def test_bad_input_is_a_clear_error_never_a_crash(tmp_path) -> None:
    with pytest.raises(TypeError):
        GitCacheManager("not a config")
    with pytest.raises(ValidationError):
        GitCacheConfig(tmp_path, max_cache_size_gb=-1)
    with pytest.raises(ValidationError):
        GitCacheConfig(tmp_path, provider_config={"github.com": {"username": "x"}})
    with pytest.raises(ValueError, match="git_config"):
        manager_at(tmp_path / "c1", git_config={"no-dot": "x"})
    manager = manager_at(tmp_path / "cache")
    assert isinstance(manager.cache_repository(123), TypeError)
    assert isinstance(manager.cache_repository("https://example.invalid/x.git", name=5), TypeError)
    bad_name = manager.cache_repository("https://example.invalid/x.git", name="../escape")
    assert isinstance(bad_name, GitCacheError) and bad_name.code == "invalid_name"
    assert isinstance(manager.cache_repository("ftp://example.invalid/x.git"), GitCacheError)
    assert manager.register_provider(token="t") is not True
    assert not os.path.exists(tmp_path / "escape")


def test_git_config_is_written_into_cached_clones(servers: Servers, tmp_path) -> None:
    manager = manager_at(tmp_path / "cache", git_config={"user.name": "Cache Bot", "url.https://mirror.invalid/.insteadOf": "gh:"})
    entry = manager.cache_repository(servers.git("beta.git"))
    assert git("-C", str(entry.cache_path), "config", "user.name") == "Cache Bot"
    assert git("-C", str(entry.cache_path), "config", "url.https://mirror.invalid/.insteadOf") == "gh:"


def test_two_processes_share_one_index(servers: Servers, tmp_path) -> None:
    root = tmp_path / "cache"
    script = (
        "import sys; from gitfleet import GitCacheConfig, GitCacheManager\n"
        "m = GitCacheManager(GitCacheConfig(sys.argv[1]))\n"
        "r = m.cache_repository(sys.argv[2])\n"
        "print(type(r).__name__)\n"
    )
    other = subprocess.Popen(
        [sys.executable, "-c", script, str(root), servers.git("beta.git")],
        stdout=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    mine = manager_at(root).cache_repository(servers.http("org-b/utils.git"))
    out, _ = other.communicate(timeout=120)
    assert out.strip() == "GitCacheEntry" and isinstance(mine, GitCacheEntry)
    names = sorted(e.name for e in manager_at(root).list_cache_entries())
    assert names == ["beta", "utils"]
    index = json.loads((root / ".gitfleet-cache" / "index.json").read_text())
    assert sorted(index["entries"]) == ["beta", "utils"]


def test_the_cache_documents_examples(servers: Servers, tmp_path, monkeypatch, capsys) -> None:
    from pathlib import Path

    from gitfleet import GitCacheConfig, GitCacheManager

    monkeypatch.chdir(tmp_path)
    local_project = tmp_path / "local-project"
    local_project.mkdir()
    (local_project / "README.md").write_text("local")
    repo1, repo2 = servers.git("beta.git"), servers.git("org-a/utils.git")

    # --- Basic Setup ---
    config = GitCacheConfig(
        cache_root=Path("./.metagit/.cache"), default_timeout_minutes=60, max_cache_size_gb=10.0
    )
    manager = GitCacheManager(config)

    # --- Caching Git Repositories ---
    entry = manager.cache_repository(servers.git("alpha.git"))
    if isinstance(entry, Exception):
        print(f"Error: {entry}")
    else:
        print(f"Cached: {entry.name}")
        print(f"Path: {entry.cache_path}")
        print(f"Status: {entry.status}")

    # --- Caching Local Directories ---
    entry = manager.cache_repository(str(local_project), name="my-project")
    if isinstance(entry, Exception):
        print(f"Error: {entry}")
    else:
        print(f"Cached: {entry.name}")
        print(f"Type: {entry.cache_type}")

    # --- Asynchronous Operations ---
    async def cache_multiple_repos():
        tasks = [
            manager.cache_repository_async(repo1),
            manager.cache_repository_async(repo2),
            manager.cache_repository_async(str(local_project)),
        ]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for result in results:
            if isinstance(result, Exception):
                print(f"Error: {result}")
            else:
                print(f"Successfully cached: {result.name}")

    asyncio.run(cache_multiple_repos())

    # --- Cache Management ---
    entries = manager.list_cache_entries()
    for entry in entries:
        print(f"{entry.name}: {entry.cache_type} ({entry.status})")
    stats = manager.get_cache_stats()
    print(f"Total entries: {stats['total_entries']}")
    print(f"Total size: {stats['total_size_gb']:.2f} GB")
    cache_path = manager.get_cached_repository("beta")
    if isinstance(cache_path, Exception):
        print(f"Error: {cache_path}")
    else:
        print(f"Cache path: {cache_path}")
    entry = manager.refresh_cache_entry("beta")
    result = manager.remove_cache_entry("beta")

    # --- Provider Integration (a provider object of the documents' shape) ---
    class GitHubProvider:
        def __init__(self, api_token, host):
            self.api_token, self.host = api_token, host

    provider = GitHubProvider(api_token=servers.token, host="127.0.0.1")
    provider.username = servers.user
    manager.register_provider(provider)
    entry = manager.cache_repository(servers.http_auth("alpha.git"), name="private")
    print(f"Provider: {entry.status}")

    # --- Error Handling ---
    entry = manager.cache_repository(servers.git("no-such.git"))
    if isinstance(entry, Exception):
        print(f"Cache failed: {entry}")
        if "Authentication failed" in str(entry):
            print("Please check your credentials")
        elif "Repository not found" in str(entry):
            print("Repository does not exist or is private")
    else:
        print(f"Successfully cached: {entry.name}")

    result = manager.clear_cache()

    out = capsys.readouterr().out
    assert "Cached: alpha\n" in out and "Status: FRESH\n" in out, out
    assert "Cached: my-project\nType: " in out, out
    for name in ("beta", "utils", "local-project"):
        assert f"Successfully cached: {name}" in out, out
    assert "Total entries: 5" in out, out
    assert "Cache path: " in out, out
    assert "Provider: FRESH" in out, out
    assert "Repository does not exist or is private" in out, out
    assert result is True and manager.list_cache_entries() == []
    assert servers.token not in out


def test_provider_tokens_never_show(tmp_path) -> None:
    token = "s3cr3t-provider-token"
    config = GitCacheConfig(tmp_path, provider_config={"git.example": {"username": "u", "token": token}})
    assert token not in repr(config) and token not in config.model_dump_json()
    with pytest.raises(ValidationError) as refused:
        GitCacheConfig(tmp_path, provider_config={"a.example": {"token": token}, "b.example": {}})
    assert token not in str(refused.value)
