"""Real git servers for the Python suite: `gitfleet-test-servers` (from the Rust workspace's test
support) serves the fixture repositories over `git daemon` and smart HTTP on 127.0.0.1.

``GITFLEET_TEST_SERVERS`` names the binary and ``GITFLEET_BIN`` the ``gitfleet`` command (for
the cluster's node); scripts/test.sh builds and sets both. Without them every test that needs
them errors: the suite never skips.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import socket
import subprocess
import time
from dataclasses import dataclass
from typing import Any, Dict, Iterator, Optional

import pytest


@dataclass
class Servers:
    info: Dict[str, Any]
    process: "subprocess.Popen[str]"

    def git(self, name: str) -> str:
        return f"{self.info['git']}/{name}"

    def http(self, name: str) -> str:
        return f"{self.info['http']}/{name}"

    def http_auth(self, name: str) -> str:
        return f"{self.info['http_auth']}/{name}"

    def http_slow(self, name: str) -> str:
        return f"{self.info['http_slow']}/{name}"

    @property
    def user(self) -> str:
        return self.info["user"]

    @property
    def token(self) -> str:
        return self.info["token"]

    def upstream(self, name: str) -> str:
        return os.path.join(self.info["repos"], name)

    def mutate(self, name: str) -> None:
        """Rewrites a fixture repository upstream (new commits on main, see make_repos.sh)."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(f"mutate {name}\n")
        self.process.stdin.flush()
        answer = self.process.stdout.readline().strip()
        assert answer == "ok", answer


@pytest.fixture(scope="session")
def servers() -> Iterator[Servers]:
    binary = os.environ.get("GITFLEET_TEST_SERVERS")
    if not binary or not os.access(binary, os.X_OK):
        raise RuntimeError(
            "GITFLEET_TEST_SERVERS must name the gitfleet-test-servers binary "
            "(scripts/test.sh builds it: cargo build -p gitfleet-tests --bin gitfleet-test-servers)"
        )
    # With a nats-server for the cluster tests (scripts/test.sh puts one on PATH).
    process = subprocess.Popen(
        [binary, "--nats"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        raise RuntimeError(f"{binary} exited before it served anything")
    yield Servers(json.loads(line), process)
    assert process.stdin is not None
    process.stdin.close()
    process.wait(timeout=60)


def git(*args: str) -> str:
    """Runs the real git; its output, stripped."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env["GIT_CONFIG_NOSYSTEM"] = "1"
    env["HOME"] = "/nonexistent"
    return subprocess.run(
        ["git", *args], check=True, capture_output=True, text=True, env=env
    ).stdout.strip()


def gitfleet_bin() -> str:
    binary = os.environ.get("GITFLEET_BIN")
    if not binary or not os.access(binary, os.X_OK):
        raise RuntimeError("GITFLEET_BIN must name the gitfleet binary (scripts/test.sh sets it)")
    return binary


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> Dict[str, str]:
    """This environment without any GITFLEET_ setting, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GITFLEET_")}
    env.update(extra)
    return env


@contextlib.contextmanager
def serving(
    root: pathlib.Path, *args: str, env: Optional[Dict[str, str]] = None
) -> Iterator[int]:
    """A `gitfleet serve --listen` on `root` (with `args`) until the block ends; yields its
    port once it takes commands."""
    port = free_port()
    process = subprocess.Popen(
        [gitfleet_bin(), "--root", str(root), "serve", "--listen", f"127.0.0.1:{port}", *args],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env=env if env is not None else clean_env(),
    )
    try:
        deadline = time.monotonic() + 60
        while not (root / ".gitfleet" / "serve.sock").exists():
            assert process.poll() is None and time.monotonic() < deadline, "serve did not start"
            time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        # A clean stop (SIGTERM drains): anything else is a failure of the test.
        assert process.wait(timeout=60) == 0, "serve did not stop cleanly"
