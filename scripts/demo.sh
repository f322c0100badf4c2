#!/usr/bin/env bash
# Tries gitfleet on this machine with nothing else installed: builds a few repositories with the
# test fixture script, serves them with `git daemon` on 127.0.0.1, and mirrors them.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'kill $daemon_pid 2>/dev/null || true; rm -rf "$work"' EXIT
tests/fixtures/make_repos.sh init "$work/upstream" >/dev/null
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
git daemon --reuseaddr --export-all --base-path="$work/upstream" --listen=127.0.0.1 --port="$port" "$work/upstream" &
daemon_pid=$!
for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
cargo build --release -q -p gitfleet
for repo in alpha beta big empty org-a/utils org-b/utils; do echo "git://127.0.0.1:$port/$repo.git"; done > "$work/list"
./target/release/gitfleet --root "${GITFLEET_ROOT:-./mirrors}" mirror --file "$work/list" "$@"
./target/release/gitfleet --root "${GITFLEET_ROOT:-./mirrors}" status
