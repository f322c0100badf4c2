#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need, then runs format,
# lint and every test. README.md and .ci/run both call this.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v git >/dev/null || need_apt+=(git)
if command -v git >/dev/null; then
    exec_path=$(git --exec-path)
    [ -x "$exec_path/git-daemon" ] || need_apt+=(git-daemon-run)
    [ -x "$exec_path/git-http-backend" ] || need_apt+=(git)
fi
command -v python3 >/dev/null || need_apt+=(python3)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "installing ${need_apt[*]}" >&2
    apt-get update -qq && apt-get install -y -qq "${need_apt[@]}"
fi
# The tests fail loudly (never skip) if these are still missing.
git --version
test -x "$(git --exec-path)/git-daemon" || { echo "git daemon is missing" >&2; exit 1; }
test -x "$(git --exec-path)/git-http-backend" || { echo "git http-backend is missing" >&2; exit 1; }

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked "$@"
