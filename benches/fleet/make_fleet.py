#!/usr/bin/env python3
"""Builds the benchmark fleet: bare repositories with fixed dates and seeded contents.

    make_fleet.py init OUT --small N --medium M --medium-commits C --refs R
                           [--bulk B --bulk-kib K] --seed S
    make_fleet.py mutate DIR REPO...      one new commit on main of each REPO (relative to DIR)

Everything goes through `git fast-import`, so object ids depend only on this script, its
arguments and git's object format: names, emails, dates and contents are fixed, the user's git
configuration is ignored. `init` writes OUT/manifest.json listing every repository.

Layout under OUT:
  small/sNNN.git          1-8 commits of a few text files, some with a tag or a second branch
  medium/mN.git           a large text file edited over C commits (repacked: real delta chains)
                          plus an incompressible 64 KiB file every 30 commits
  bulk/bN.git             4 commits of text and incompressible data, K KiB in all: cheap to
                          pack and to index, so a transfer of one is bound by the network
  refs/many-refs.git      R refs: half branches feature/f-NNNNN, half tags release/r-NNNNN
  empty/empty.git         no commits at all
  private/secret.git      small; served only behind HTTP auth (the wrong-token case)
"""

import argparse
import json
import os
import random
import subprocess
import sys

BASE_DATE = 1_700_000_000
MUTATE_DATE = 1_800_000_000
AUTHOR = b"Ada Author <ada@example.invalid>"
COMMITTER = b"Cody Committer <cody@example.invalid>"


def git_env():
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(
        GIT_CONFIG_GLOBAL="/dev/null",
        GIT_CONFIG_NOSYSTEM="1",
        GIT_TERMINAL_PROMPT="0",
        TZ="UTC",
        LC_ALL="C",
    )
    return env


def git(*args, cwd=None, stdin=None):
    subprocess.run(
        ["git", "-c", "init.defaultBranch=main", "-c", "gc.auto=0", *args],
        cwd=cwd,
        input=stdin,
        env=git_env(),
        check=True,
        stdout=subprocess.DEVNULL,
    )


class Stream:
    """A fast-import stream under construction."""

    def __init__(self, date):
        self.out = bytearray()
        self.date = date
        self.mark = 0

    def data(self, payload):
        self.out += b"data %d\n" % len(payload) + payload + b"\n"

    def commit(self, ref, message, changes, parent=None):
        """changes: list of (path, bytes or None for delete). Returns the commit's mark."""
        self.mark += 1
        self.date += 60
        self.out += b"commit %s\nmark :%d\n" % (ref.encode(), self.mark)
        self.out += b"author %s %d +0000\n" % (AUTHOR, self.date)
        self.out += b"committer %s %d +0000\n" % (COMMITTER, self.date)
        self.data(message.encode())
        if parent is not None:
            self.out += b"from %s\n" % parent.encode()
        for path, content in changes:
            if content is None:
                self.out += b"D %s\n" % path.encode()
            else:
                self.out += b"M 100644 inline %s\n" % path.encode()
                self.data(content)
        return self.mark

    def reset(self, ref, mark):
        self.out += b"reset %s\nfrom :%d\n" % (ref.encode(), mark)

    def tag(self, name, mark, message):
        self.date += 60
        self.out += b"tag %s\nfrom :%d\n" % (name.encode(), mark)
        self.out += b"tagger %s %d +0000\n" % (COMMITTER, self.date)
        self.data(message.encode())


def new_bare(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    git("init", "-q", "--bare", path)
    git("symbolic-ref", "HEAD", "refs/heads/main", cwd=path)
    # git daemon serves it without --export-all too.
    open(os.path.join(path, "git-daemon-export-ok"), "w").close()


def import_stream(path, stream):
    git("fast-import", "--quiet", "--force", cwd=path, stdin=bytes(stream.out))


def vocabulary(rng, n=600):
    letters = "abcdefghijklmnopqrstuvwxyz"
    return ["".join(rng.choice(letters) for _ in range(rng.randint(2, 10))) for _ in range(n)]


def line(rng, words):
    return " ".join(rng.choice(words) for _ in range(rng.randint(4, 12)))


def text(rng, words, lines):
    return ("\n".join(line(rng, words) for _ in range(lines)) + "\n").encode()


def make_small(out, seed, i, words):
    rng = random.Random(f"{seed}-small-{i}")
    path = os.path.join(out, "small", f"s{i:03d}.git")
    new_bare(path)
    stream = Stream(BASE_DATE + i * 10_000)
    files = ["README.md", "src/lib.txt", "src/util.txt", "docs/guide.md", "Makefile"]
    last = None
    commits = rng.randint(1, 8)
    for c in range(commits):
        changes = []
        for name in rng.sample(files, rng.randint(1, 2)):
            changes.append((name, text(rng, words, rng.randint(20, 80))))
        last = stream.commit("refs/heads/main", f"s{i:03d}: change {c}", changes, None)
    if rng.random() < 0.3:
        stream.tag("v1.0", last, f"s{i:03d} 1.0")
    if rng.random() < 0.3:
        stream.reset("refs/heads/dev", last)
    import_stream(path, stream)
    git("pack-refs", "--all", cwd=path)
    return {"name": f"small/s{i:03d}.git", "kind": "small", "commits": commits}


def make_medium(out, seed, j, commits, words):
    rng = random.Random(f"{seed}-medium-{j}")
    path = os.path.join(out, "medium", f"m{j}.git")
    new_bare(path)
    stream = Stream(BASE_DATE + 5_000_000 + j * 100_000)
    body = [line(rng, words) for _ in range(3000 + 1000 * j)]
    changelog = []
    for c in range(commits):
        for _ in range(rng.randint(5, 15)):
            body[rng.randrange(len(body))] = line(rng, words)
        for _ in range(rng.randint(0, 3)):
            body.insert(rng.randrange(len(body)), line(rng, words))
        for _ in range(rng.randint(0, 2)):
            del body[rng.randrange(len(body))]
        changelog.append(f"{c}: {line(rng, words)}")
        changes = [
            ("src/main.txt", ("\n".join(body) + "\n").encode()),
            ("CHANGELOG", ("\n".join(changelog) + "\n").encode()),
        ]
        if c % 30 == 0:
            changes.append((f"assets/blob-{c // 30}.bin", rng.randbytes(64 * 1024)))
        stream.commit("refs/heads/main", f"m{j}: edit {c}", changes, None)
    import_stream(path, stream)
    git("repack", "-a", "-d", "-f", "-q", "--window=50", "--depth=50", cwd=path)
    git("pack-refs", "--all", cwd=path)
    return {"name": f"medium/m{j}.git", "kind": "medium", "commits": commits}


def make_bulk(out, seed, j, kib, words):
    rng = random.Random(f"{seed}-bulk-{j}")
    path = os.path.join(out, "bulk", f"b{j}.git")
    new_bare(path)
    stream = Stream(BASE_DATE + 8_000_000 + j * 10_000)
    parts = 4
    for c in range(parts):
        changes = [
            ("README.md", text(rng, words, 10 + c)),
            (f"data/part-{c}.bin", rng.randbytes(kib * 1024 // parts)),
        ]
        stream.commit("refs/heads/main", f"b{j}: part {c}", changes, None)
    import_stream(path, stream)
    git("repack", "-a", "-d", "-q", "--write-bitmap-index", cwd=path)
    git("pack-refs", "--all", cwd=path)
    return {"name": f"bulk/b{j}.git", "kind": "bulk", "commits": parts}


def make_refs(out, seed, refs, words):
    rng = random.Random(f"{seed}-refs")
    path = os.path.join(out, "refs", "many-refs.git")
    new_bare(path)
    stream = Stream(BASE_DATE + 9_000_000)
    marks = []
    for c in range(500):
        marks.append(
            stream.commit(
                "refs/heads/main",
                f"refs: commit {c}",
                [("counter.txt", text(rng, words, 3))],
                None,
            )
        )
    for k in range(refs // 2):
        stream.reset(f"refs/heads/feature/f-{k:05d}", marks[k % len(marks)])
    for k in range(refs - refs // 2):
        stream.reset(f"refs/tags/release/r-{k:05d}", marks[(k * 7) % len(marks)])
    # fast-import leaves the last `reset` ref checked out nowhere; make sure main is the tip.
    stream.reset("refs/heads/main", marks[-1])
    import_stream(path, stream)
    git("pack-refs", "--all", cwd=path)
    return {"name": "refs/many-refs.git", "kind": "refs", "commits": 500, "refs": refs + 1}


def make_empty(out):
    path = os.path.join(out, "empty", "empty.git")
    new_bare(path)
    return {"name": "empty/empty.git", "kind": "empty", "commits": 0}


def make_private(out, seed, words):
    rng = random.Random(f"{seed}-private")
    path = os.path.join(out, "private", "secret.git")
    new_bare(path)
    stream = Stream(BASE_DATE + 9_900_000)
    stream.commit("refs/heads/main", "secret", [("README.md", text(rng, words, 10))], None)
    import_stream(path, stream)
    return {"name": "private/secret.git", "kind": "private", "commits": 1}


def cmd_init(args):
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    words = vocabulary(random.Random(f"{args.seed}-words"))
    repos = []
    for i in range(args.small):
        repos.append(make_small(out, args.seed, i, words))
    for j in range(args.medium):
        repos.append(make_medium(out, args.seed, j, args.medium_commits, words))
    for j in range(args.bulk):
        repos.append(make_bulk(out, args.seed, j, args.bulk_kib, words))
    repos.append(make_refs(out, args.seed, args.refs, words))
    repos.append(make_empty(out))
    repos.append(make_private(out, args.seed, words))
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump({"seed": args.seed, "repos": repos}, f, indent=1)
        f.write("\n")


def cmd_mutate(args):
    for n, name in enumerate(args.repos):
        path = os.path.join(args.dir, name)
        stream = Stream(MUTATE_DATE + n * 60)
        content = f"upstream change {n} of {name}\n".encode()
        stream.commit(
            "refs/heads/main",
            f"upstream change {n}",
            [("UPSTREAM-CHANGE.txt", content)],
            "refs/heads/main^0",
        )
        import_stream(path, stream)


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    init = sub.add_parser("init")
    init.add_argument("out")
    init.add_argument("--small", type=int, required=True)
    init.add_argument("--medium", type=int, required=True)
    init.add_argument("--medium-commits", type=int, required=True)
    init.add_argument("--refs", type=int, required=True)
    init.add_argument("--bulk", type=int, default=0)
    init.add_argument("--bulk-kib", type=int, default=256)
    init.add_argument("--seed", default="gitfleet-bench")
    mutate = sub.add_parser("mutate")
    mutate.add_argument("dir")
    mutate.add_argument("repos", nargs="+")
    args = parser.parse_args()
    if args.command == "init":
        cmd_init(args)
    else:
        cmd_mutate(args)


if __name__ == "__main__":
    sys.exit(main())
