"""`GET /metrics` of a real `gitfleet serve`, read with the Prometheus project's own parser
(prometheus_client's OpenMetrics parser), against what the test made happen."""

from __future__ import annotations

import subprocess
import urllib.request

from conftest import Servers, clean_env, gitfleet_bin, serving
from prometheus_client.openmetrics.parser import text_string_to_metric_families


def samples(text: str) -> dict:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_serve_metrics_count_what_happened(servers: Servers, tmp_path) -> None:
    root = tmp_path / "root"
    env = clean_env(GITFLEET_WEBHOOK_SECRET="metrics-test-secret")
    with serving(root, "--retries", "0", env=env) as port:
        urls = [servers.git("alpha.git"), servers.http("beta.git"), servers.git("absent.git")]
        done = subprocess.run(
            [gitfleet_bin(), "--root", str(root), "mirror", *urls], env=env, capture_output=True
        )
        assert done.returncode == 1, done.stderr  # absent.git fails
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as reply:
            assert reply.headers["Content-Type"].startswith("application/openmetrics-text")
            text = reply.read().decode()
    got = samples(text)

    def value(name: str, **labels) -> float:
        return got[(name, tuple(sorted(labels.items())))]

    assert value("gitfleet_operations_total", operation="mirror", result="completed") == 2
    assert value("gitfleet_operations_total", operation="mirror", result="failed") == 1
    assert value("gitfleet_failures_total", code="not_found") == 1
    assert value("gitfleet_retries_total") == 0
    assert value("gitfleet_operation_duration_seconds_count", operation="mirror") == 3
    assert value("gitfleet_received_bytes_total") > 0
    # What the two mirrors take on disk, as du counts it.
    du = subprocess.run(["du", "-s", "-B1", *(str(p) for p in root.glob("*/*.git"))],
                        capture_output=True, text=True, check=True).stdout
    assert value("gitfleet_disk_used_bytes") == sum(int(line.split()[0]) for line in du.splitlines())
    assert value("gitfleet_tasks", status="completed") == 2
    assert value("gitfleet_tasks", status="failed") == 1
    assert value("gitfleet_tasks", status="cloning") == 0
    assert value("gitfleet_tasks_by_freshness", freshness="fresh") == 2
    assert value("gitfleet_tasks_by_freshness", freshness="error") == 1
    # Counts only: no repository appears.
    for name in ("alpha", "beta", "absent", "127.0.0.1"):
        assert name not in text
