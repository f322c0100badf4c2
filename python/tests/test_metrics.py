"""`GET /metrics` of a real `gitfleet serve`, read with the Prometheus project's own parser
(prometheus_client's OpenMetrics parser), against what the test made happen."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request

from conftest import Servers, gitfleet_bin
from prometheus_client.openmetrics.parser import text_string_to_metric_families


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def samples(text: str) -> dict:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_serve_metrics_count_what_happened(servers: Servers, tmp_path) -> None:
    root = tmp_path / "root"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GITFLEET_")}
    env["GITFLEET_WEBHOOK_SECRET"] = "metrics-test-secret"
    serve = subprocess.Popen(
        [gitfleet_bin(), "--root", str(root), "serve", "--retries", "0",
         "--listen", f"127.0.0.1:{port}"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )
    try:
        deadline = time.monotonic() + 60
        while not (root / ".gitfleet" / "serve.sock").exists():
            assert serve.poll() is None and time.monotonic() < deadline, "serve did not start"
            time.sleep(0.05)
        urls = [servers.git("alpha.git"), servers.http("beta.git"), servers.git("absent.git")]
        done = subprocess.run(
            [gitfleet_bin(), "--root", str(root), "mirror", *urls], env=env, capture_output=True
        )
        assert done.returncode == 1, done.stderr  # absent.git fails
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as reply:
            assert reply.headers["Content-Type"].startswith("application/openmetrics-text")
            text = reply.read().decode()
    finally:
        serve.terminate()
        serve.wait(timeout=60)
    got = samples(text)

    def value(name: str, **labels) -> float:
        return got[(name, tuple(sorted(labels.items())))]

    assert value("gitfleet_operations_total", operation="mirror", result="completed") == 2
    assert value("gitfleet_operations_total", operation="mirror", result="failed") == 1
    assert value("gitfleet_failures_total", code="not_found") == 1
    assert value("gitfleet_retries_total") == 0
    assert value("gitfleet_operation_duration_seconds_count", operation="mirror") == 3
    assert value("gitfleet_received_bytes_total") > 0
    assert value("gitfleet_tasks", status="completed") == 2
    assert value("gitfleet_tasks", status="failed") == 1
    assert value("gitfleet_tasks", status="cloning") == 0
    assert value("gitfleet_tasks_by_freshness", freshness="fresh") == 2
    assert value("gitfleet_tasks_by_freshness", freshness="error") == 1
    # Counts only: no repository appears.
    for name in ("alpha", "beta", "absent", "127.0.0.1"):
        assert name not in text
