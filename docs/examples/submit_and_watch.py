#!/usr/bin/env python3
"""Submit repositories to a gitfleet cluster and watch them until every task is final.

    pip install nats-py
    python3 submit_and_watch.py --nats nats://127.0.0.1:4222 https://github.com/rust-lang/log

Exit status: 0 when every repository completed, 1 otherwise, 130 when interrupted.
"""
import argparse
import asyncio
import json
import os
import sys
import time

import nats

FINAL = ("completed", "failed")


class ApiError(Exception):
    def __init__(self, error):
        super().__init__(f"{error['code']}: {error['message']}")
        self.code = error["code"]


async def call(nc, prefix, operation, body):
    """One request of the API: JSON in, {"ok": ...} or {"error": {...}} out."""
    subject = f"{prefix}.api.{operation}"
    try:
        msg = await nc.request(subject, json.dumps(body).encode(), timeout=30)
    except nats.errors.NoRespondersError:
        raise SystemExit(f"no gitfleet node answers {subject}: is a node running?")
    reply = json.loads(msg.data)
    if "error" in reply:
        raise ApiError(reply["error"])
    return reply["ok"]


async def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("repositories", nargs="+", metavar="URL", help="URLs (or owner/name for init)")
    p.add_argument("--nats", default=os.environ.get("GITFLEET_NATS", "nats://127.0.0.1:4222"))
    p.add_argument("--prefix", default=os.environ.get("GITFLEET_PREFIX", "gitfleet"))
    p.add_argument("--operation", default="mirror", choices=["mirror", "bare", "checkout", "init"])
    p.add_argument("--poll", type=float, default=2.0, help="seconds between task-bucket polls")
    args = p.parse_args()

    nc = await nats.connect(args.nats)
    updates = asyncio.Queue()

    async def on_status(msg):
        updates.put_nowait(json.loads(msg.data))

    # Subscribe before submitting, so that no event of the new tasks is missed.
    await nc.subscribe(f"{args.prefix}.status.*", cb=on_status)
    await nc.flush()

    started = time.monotonic()
    reply = await call(nc, args.prefix, "submit",
                       {"repositories": args.repositories, "operation": args.operation})
    pending, rejected, done = {}, [], {}
    for item in reply["tasks"]:
        if item.get("error"):
            rejected.append(item)
            e = item["error"]
            print(f"rejected  {item['input']}: [{e.get('task_error') or e['code']}] {e['message']}")
        else:
            pending[item["task_id"]] = item["input"]
            print(f"{'joined' if item['duplicate'] else 'queued':9} {item['input']} -> {item['task_id']}")

    def finish(task):
        if task["id"] in pending and task["status"]["status_type"] in FINAL:
            del pending[task["id"]]
            done[task["id"]] = task
            print(f"{task['status']['status_type']:9} {task['url']}")

    shown = {}  # task id -> when its progress was last printed
    heard = {}  # task id -> when an event of it (or a read) last came
    next_poll = time.monotonic() + args.poll
    while pending:
        try:
            update = await asyncio.wait_for(updates.get(), timeout=0.5)
        except asyncio.TimeoutError:
            update = None
        if update and update["kind"] in ("state", "progress"):
            task_id = update["task"]["id"] if update["kind"] == "state" else update["task_id"]
            if task_id in pending:
                heard[task_id] = time.monotonic()
        if update and update["kind"] == "state":
            finish(update["task"])
        elif update and update["kind"] == "progress" and update["task_id"] in pending:
            if time.monotonic() - shown.get(update["task_id"], 0) >= 1.0:
                shown[update["task_id"]] = time.monotonic()
                print(f"{update['progress']:3d}%      {pending[update['task_id']]} "
                      f"{update['phase']} {update['bytes_received'] >> 10} KiB "
                      f"({update['bytes_per_sec'] >> 10} KiB/s)")
        if time.monotonic() >= next_poll:
            # Status events are best effort: the task bucket is the truth. Read only the
            # tasks quiet for a while, the quietest first and at most 64 a round: reading
            # thousands every round would compete with the work.
            now = time.monotonic()
            quiet = [t for t in pending if now - heard.get(t, started) >= args.poll]
            for task_id in sorted(quiet, key=lambda t: heard.get(t, started))[:64]:
                heard[task_id] = now
                finish(await call(nc, args.prefix, "get", {"task": task_id}))
            next_poll = time.monotonic() + args.poll

    completed = [t for t in done.values() if t["status"]["status_type"] == "completed"]
    failed = [t for t in done.values() if t["status"]["status_type"] != "completed"]
    print(f"\n{len(completed)} completed, {len(failed)} failed, {len(rejected)} rejected "
          f"in {time.monotonic() - started:.1f}s")
    for t in completed:
        s = t.get("last_sync") or {}
        print(f"  ok     {t['url']} on {t.get('node')}: {t['path']} "
              f"({s.get('total_commits', 0)} commits, {s.get('new_commits', 0)} new, "
              f"{s.get('bytes_received', 0)} bytes)")
    for t in failed:
        print(f"  FAILED {t['url']} [{t.get('error_code')}]: {t['status']['error']}")
    await nc.close()
    return 0 if not failed and not rejected else 1


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main()))
    except ApiError as e:
        sys.exit(f"gitfleet: {e}")
    except KeyboardInterrupt:
        print("stopped watching; the cluster keeps working", file=sys.stderr)
        sys.exit(130)
