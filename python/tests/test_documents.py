"""The product documents' examples (clone-monitoring.md, clone-status.md), run as written with
only their URLs and credentials changed to the test servers'. The Flask example needs Flask and a
web server and is not run; the notification example runs with its e-mail function recording
instead of sending."""

from __future__ import annotations

import asyncio
import os
from typing import List

import pytest
from conftest import Servers

from GitFleet import RepoManager, to_pydantic_status


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """The documents' managers make their own temporary roots; run them from a scratch cwd."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_basic_clone_monitoring(servers: Servers, in_tmp, capsys) -> None:
    url = servers.http_auth("alpha.git")

    # --- clone-monitoring.md, "Basic Clone Monitoring" ---
    async def main():
        # Initialize repository manager
        repo_manager = RepoManager(
            urls=[url], github_username=servers.user, github_token=servers.token
        )

        # Start cloning all repositories
        await repo_manager.clone_all()

        # Get the status of all clone tasks
        clone_tasks = await repo_manager.fetch_clone_tasks()

        # Check each task's status
        for url_, task in clone_tasks.items():
            status_type = task.status.status_type

            if status_type == "completed":
                print(f"✅ {url_} - Cloned successfully to {task.temp_dir}")
            elif status_type == "failed":
                print(f"❌ {url_} - Failed: {task.status.error}")
            else:
                print(f"⏳ {url_} - Status: {status_type}")

    asyncio.run(main())
    out = capsys.readouterr().out
    assert f"✅ {url} - Cloned successfully to " in out, out
    assert servers.token not in out


def test_real_time_progress_monitoring(servers: Servers, in_tmp, capsys, monkeypatch) -> None:
    urls = [servers.http_slow("big.git"), servers.git("beta.git")]
    cleared: List[str] = []
    # The example clears the terminal between refreshes.
    monkeypatch.setattr(os, "system", lambda command: cleared.append(command) or 0)

    # --- clone-monitoring.md, "Real-Time Progress Monitoring" ---
    async def main():
        # Initialize repository manager
        repo_manager = RepoManager(
            urls=urls, github_username="username", github_token="token"
        )

        # Start cloning all repositories (returns a future)
        clone_future = repo_manager.clone_all()

        # Monitor progress until all clones complete
        try:
            while not clone_future.done():
                # Get current status of all clone tasks
                clone_tasks = await repo_manager.fetch_clone_tasks()

                # Clear terminal (for a cleaner display)
                os.system("cls" if os.name == "nt" else "clear")

                print("Repository Clone Status\n")

                # Flag to check if all tasks are complete
                all_done = True

                for url, task in clone_tasks.items():
                    status = task.status.status_type
                    progress = task.status.progress

                    # Pretty status indicators
                    status_icon = {
                        "queued": "⌛",
                        "cloning": "🔄",
                        "completed": "✅",
                        "failed": "❌",
                    }.get(status, "❓")

                    print(f"{status_icon} {url}")

                    # Show progress bar for cloning status
                    if status == "cloning" and progress is not None:
                        bar_length = 30
                        filled_length = int(bar_length * progress / 100)
                        bar = "█" * filled_length + "░" * (bar_length - filled_length)
                        print(f"  Progress: [{bar}] {progress}%")

                    # Show error if failed
                    if status == "failed" and task.status.error:
                        print(f"  Error: {task.status.error}")

                    # Show clone directory if available
                    if task.temp_dir:
                        print(f"  Directory: {task.temp_dir}")

                    print()

                    # Check if we need to continue monitoring
                    if status not in ["completed", "failed"]:
                        all_done = False

                # Exit the loop if all done
                if all_done:
                    break

                # Wait before refreshing
                await asyncio.sleep(1)

            # Make sure the clone_all task completes
            await clone_future

        except KeyboardInterrupt:
            print("\nMonitoring interrupted. Clone operations may continue in the background.")

        print("All clone operations completed or failed.")

    asyncio.run(main())
    out = capsys.readouterr().out
    assert "All clone operations completed or failed." in out
    assert "🔄 " + urls[0] in out, out  # seen while it was cloning
    assert "  Progress: [" in out, out
    assert out.count("  Directory: ") >= 2, out
    assert cleared and cleared[0] == "clear"


def test_handling_timeouts(servers: Servers, in_tmp, capsys) -> None:
    slow = servers.http_slow("big.git")

    # --- clone-monitoring.md, "Handling Timeouts and Cancellation" ---
    async def clone_with_timeout(repo_manager, timeout=300):  # 5 minutes timeout
        # Start cloning
        clone_future = repo_manager.clone_all()

        try:
            # Wait for cloning to complete with timeout
            await asyncio.wait_for(clone_future, timeout=timeout)
            print("All clones completed successfully")
        except asyncio.TimeoutError:
            print(f"Clone operation timed out after {timeout} seconds")

            # Check status of timed-out clones
            clone_tasks = await repo_manager.fetch_clone_tasks()

            for url, task in clone_tasks.items():
                if task.status.status_type != "completed":
                    print(f"Incomplete: {url} - Status: {task.status.status_type}")

        # Get final status
        return await repo_manager.fetch_clone_tasks()

    async def main():
        timed_out = await clone_with_timeout(RepoManager([slow]), timeout=0.5)
        finished = await clone_with_timeout(RepoManager([servers.git("alpha.git")]))
        return timed_out, finished

    timed_out, finished = asyncio.run(main())
    out = capsys.readouterr().out
    assert "Clone operation timed out after 0.5 seconds" in out, out
    assert f"Incomplete: {slow} - Status: " in out, out
    assert timed_out[slow].status.status_type != "completed"
    assert "All clones completed successfully" in out, out
    assert [t.status.status_type for t in finished.values()] == ["completed"]


def test_clone_status_examples(servers: Servers, in_tmp, capsys) -> None:
    missing = servers.git("missing.git")
    urls = [servers.git("beta.git"), missing]

    # --- clone-status.md, "Using RustCloneStatus Directly" ---
    async def main():
        manager = RepoManager(urls, "username", "token")
        await manager.clone_all()
        clone_tasks = await manager.fetch_clone_tasks()
        for url, task in clone_tasks.items():
            status = task.status  # This is a RustCloneStatus object
            print(f"Repo: {url}")
            print(f"  Status: {status.status_type}")
            if status.status_type == "cloning":
                print(f"  Progress: {status.progress}%")
            if status.status_type == "failed":
                print(f"  Error: {status.error}")

    asyncio.run(main())

    # --- clone-status.md, "Converting to PydanticCloneStatus" ---
    async def main_pydantic():
        manager = RepoManager(urls, "username", "token")
        await manager.clone_all()
        clone_tasks = await manager.fetch_clone_tasks()
        for url, task in clone_tasks.items():
            # Convert RustCloneStatus to PydanticCloneStatus
            status = to_pydantic_status(task.status)
            print(f"Repo: {url}")
            print(f"  Status: {status.status_type}")

            # Use Pydantic features
            status_json = status.model_dump_json(indent=2)
            print(f"  Status JSON: {status_json}")

    asyncio.run(main_pydantic())
    out = capsys.readouterr().out
    assert f"Repo: {urls[0]}\n  Status: completed" in out, out
    assert f"Repo: {missing}\n  Status: failed\n  Error: {missing}" in out, out
    assert '"status_type": "completed"' in out, out
    assert '"error_code": "not_found"' in out, out


def test_clone_notifications(servers: Servers, in_tmp) -> None:
    # big.git comes slowly: the loop runs while the other two finish.
    urls = [servers.git("alpha.git"), servers.git("missing.git"), servers.http_slow("big.git")]
    sent = []

    # --- clone-monitoring.md, "Clone Notifications" (send_notification records) ---
    def send_notification(email, subject, message):
        sent.append((email, subject, message))

    async def clone_with_notifications(repo_manager, email):
        # Start cloning
        clone_future = repo_manager.clone_all()

        # Previous status to track changes
        previous_status = {}

        # Monitor until complete
        while not clone_future.done():
            # Get current status
            clone_tasks = await repo_manager.fetch_clone_tasks()

            # Check for status changes
            for url, task in clone_tasks.items():
                current_status = task.status.status_type

                # If we haven't seen this task before or status changed
                if url not in previous_status or previous_status[url] != current_status:
                    # Update previous status
                    previous_status[url] = current_status

                    # Send notification for completed or failed
                    if current_status in ["completed", "failed"]:
                        send_notification(
                            email,
                            f"Repository Clone {current_status.capitalize()}",
                            f"The clone of {url} has {current_status}.\n"
                            + (f"Error: {task.status.error}" if current_status == "failed" else "")
                            + (f"Directory: {task.temp_dir}" if task.temp_dir else ""),
                        )

            # Wait before checking again
            await asyncio.sleep(0.1)

    asyncio.run(clone_with_notifications(RepoManager(urls), "ops@example.invalid"))
    subjects = {message.split("\n")[0]: subject for _, subject, message in sent}
    assert subjects[f"The clone of {urls[0]} has completed."] == "Repository Clone Completed"
    assert subjects[f"The clone of {urls[1]} has failed."] == "Repository Clone Failed"
    assert all(email == "ops@example.invalid" for email, _, _ in sent)
