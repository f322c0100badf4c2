"""Real git servers for the Python suite: `gitfleet-test-servers` (from the Rust workspace's test
support) serves the fixture repositories over `git daemon` and smart HTTP on 127.0.0.1.

``GITFLEET_TEST_SERVERS`` names the binary and ``GITFLEET_BIN`` the ``gitfleet`` command (for
the cluster's node); scripts/test.sh builds and sets both. Without them every test that needs
them errors: the suite never skips.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from typing import Any, Dict, Iterator

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
