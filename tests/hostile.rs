//! Hostile input: repositories, servers and requests made by someone who wants a node to run a
//! command, write outside its storage root, or sync into something gitfleet did not make. Each
//! test builds its repositories with the git CLI and serves them with a real `git daemon` or
//! smart-HTTP server on 127.0.0.1 (docs/SECURITY.md lists which test covers which defence).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gitfleet_git::Request;
use gitfleet_proto::{ErrorCode, Operation};
use gitfleet_tests::{
    EngineRoot, Fixtures, GitDaemon, HttpOptions, HttpServer, fsck, mirror_clone, refs, run_git,
};
use tempfile::TempDir;

fn tempdir() -> TempDir {
    tempfile::tempdir().expect("creating a temporary directory")
}

/// A loopback port that records whether anyone connected: where a hostile config would send
/// gitfleet (a proxy, a rewritten URL).
struct Trap {
    listener: TcpListener,
}

impl Trap {
    fn new() -> Trap {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding a trap port");
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        Trap { listener }
    }

    fn url(&self) -> String {
        format!(
            "http://127.0.0.1:{}",
            self.listener.local_addr().expect("an address").port()
        )
    }

    fn was_contacted(&self) -> bool {
        self.listener.accept().is_ok()
    }
}

/// Every file below `dir` with its content: to show that nothing changed.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("reading a directory") {
            let entry = entry.expect("an entry");
            let kind = entry.file_type().expect("a file type");
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_symlink() {
                let target = std::fs::read_link(entry.path()).expect("a link");
                out.push((entry.path(), target.into_os_string().into_encoded_bytes()));
            } else {
                out.push((entry.path(), std::fs::read(entry.path()).expect("a file")));
            }
        }
    }
    out.sort();
    out
}

fn git_config(repo: &Path, key: &str, value: &str) {
    run_git(repo, &["config", "--file", "config", key, value]);
}

#[test]
fn a_repositorys_own_config_is_never_used() {
    let fx = Fixtures::new();
    let server = HttpServer::start(&fx.root, HttpOptions::default());
    let store = EngineRoot::new();
    let url = server.url("alpha.git");
    let req = store.request(&url, Operation::Mirror);
    store.run(&req).expect("the first mirror");

    // Whoever can write the config (an earlier bug, an operator's mistake) must not be able to
    // choose where gitfleet connects, what it fetches, or which command it runs.
    let trap = Trap::new();
    let pwned = req.dest.join("pwned");
    git_config(
        &req.dest,
        "remote.origin.url",
        &format!("{}/evil", trap.url()),
    );
    git_config(
        &req.dest,
        "remote.origin.fetch",
        "+refs/heads/*:refs/evil/*",
    );
    git_config(&req.dest, "http.proxy", &trap.url());
    git_config(
        &req.dest,
        &format!("url.{}/.insteadOf", trap.url()),
        &format!("http://127.0.0.1:{}/", server.port()),
    );
    git_config(
        &req.dest,
        "core.sshCommand",
        &format!("touch {}", pwned.display()),
    );
    fx.mutate("alpha.git");

    store
        .run(&store.request(&url, Operation::Sync))
        .expect("the sync fetches from the request's url");
    assert!(!trap.was_contacted(), "the config's proxy or url was used");
    assert!(!pwned.exists());
    let mirrored = refs(&req.dest);
    assert!(
        !mirrored.keys().any(|r| r.starts_with("refs/evil/")),
        "the config's refspec was used: {mirrored:?}"
    );
    let reference = tempdir();
    mirror_clone(&url, &reference.path().join("r.git"));
    assert_eq!(mirrored, refs(&reference.path().join("r.git")));
}

#[test]
fn a_repository_gitfleet_did_not_make_is_left_alone() {
    let fx = Fixtures::new();
    let daemon = GitDaemon::start(&fx.root);
    let store = EngineRoot::new();
    let trap = Trap::new();
    for operation in [Operation::Mirror, Operation::Sync] {
        let req = store.request(&daemon.url("alpha.git"), operation);
        std::fs::create_dir_all(&req.dest).expect("mkdir");
        run_git(&req.dest, &["init", "--quiet", "--bare"]);
        git_config(&req.dest, "http.proxy", &trap.url());
        let before = snapshot(&req.dest);
        let err = store
            .run(&req)
            .expect_err("a foreign repository is refused");
        assert_eq!(err.code, ErrorCode::Conflict, "{operation}: {err}");
        assert!(err.message.contains("did not create"), "{err}");
        assert_eq!(snapshot(&req.dest), before, "{operation}: it was touched");
        std::fs::remove_dir_all(&req.dest).expect("cleaning up");
    }
    assert!(!trap.was_contacted());
}

/// A source repository served as `planted`, whose tree holds what an attacker would plant in a
/// checkout: a directory that looks like a bare repository (`x.git`), and a symlink out of the
/// storage root (`out`), plus an innocent repository served at `planted/out/y`, whose storage
/// path passes through that symlink.
struct Planted {
    _dir: TempDir,
    daemon: GitDaemon,
    outside: TempDir,
}

impl Planted {
    fn new() -> Planted {
        let dir = tempdir();
        let outside = tempdir();
        let base = dir.path().join("served");
        let work = dir.path().join("work");
        std::fs::create_dir_all(work.join("x.git/objects/pack")).expect("mkdir");
        std::fs::create_dir_all(work.join("x.git/refs/heads")).expect("mkdir");
        std::fs::write(work.join("x.git/objects/pack/.keep"), "").expect("write");
        std::fs::write(work.join("x.git/refs/heads/.keep"), "").expect("write");
        std::fs::write(work.join("x.git/HEAD"), "ref: refs/heads/main\n").expect("write");
        std::fs::write(
            work.join("x.git/config"),
            "[core]\n\tbare = true\n\tsshCommand = touch /tmp/gitfleet-pwned\n\
             [remote \"origin\"]\n\turl = http://127.0.0.1:9/evil\n\
             \tfetch = +refs/*:refs/evil/*\n",
        )
        .expect("write");
        std::os::unix::fs::symlink(outside.path(), work.join("out")).expect("symlink");
        run_git(&work, &["init", "--quiet", "-b", "main"]);
        run_git(&work, &["add", "-A"]);
        run_git(
            &work,
            &[
                "-c",
                "user.name=a",
                "-c",
                "user.email=a@example.invalid",
                "commit",
                "--quiet",
                "-m",
                "plant",
            ],
        );
        std::fs::create_dir_all(&base).expect("mkdir");
        run_git(
            dir.path(),
            &[
                "clone",
                "--quiet",
                "--bare",
                &work.to_string_lossy(),
                &base.join("planted.git").to_string_lossy(),
            ],
        );
        let innocent = base.join("planted/out/y.git");
        std::fs::create_dir_all(&innocent).expect("mkdir");
        run_git(
            dir.path(),
            &[
                "clone",
                "--quiet",
                "--bare",
                &base.join("planted.git").to_string_lossy(),
                &innocent.to_string_lossy(),
            ],
        );
        let daemon = GitDaemon::start(&base);
        Planted {
            _dir: dir,
            daemon,
            outside,
        }
    }
}

#[test]
fn a_checkout_cannot_plant_a_repository_or_a_symlink_for_another_url() {
    let planted = Planted::new();
    let store = EngineRoot::new();
    let checkout = store.request(&planted.daemon.url("planted"), Operation::Checkout);
    store.run(&checkout).expect("the checkout");
    assert!(
        checkout.dest.join("x.git/HEAD").is_file(),
        "the plant is in place"
    );
    let before = snapshot(&checkout.dest);

    // Its path is the planted directory: syncing into it would use the planted config.
    let planted_repo = store.request(&planted.daemon.url("planted/x"), Operation::Mirror);
    assert_eq!(planted_repo.dest, checkout.dest.join("x.git"));
    let err = store.run(&planted_repo).expect_err("inside a working tree");
    assert_eq!(err.code, ErrorCode::Conflict, "{err}");
    assert!(err.message.contains("working tree"), "{err}");

    // Its path passes the planted symlink: following it would write outside the root.
    let through_link = store.request(&planted.daemon.url("planted/out/y"), Operation::Mirror);
    let err = store.run(&through_link).expect_err("through a symlink");
    assert_eq!(err.code, ErrorCode::Conflict, "{err}");
    assert_eq!(
        std::fs::read_dir(planted.outside.path())
            .expect("the outside directory")
            .count(),
        0,
        "something was written outside the storage root"
    );
    assert_eq!(snapshot(&checkout.dest), before, "the checkout was touched");
    assert!(!Path::new("/tmp/gitfleet-pwned").exists());
}

#[test]
fn a_symlink_below_the_root_is_never_followed() {
    let planted = Planted::new();
    let store = EngineRoot::new();
    let req = store.request(&planted.daemon.url("planted/out/y"), Operation::Mirror);
    // Whatever put it there: a directory on the way that is a symlink out of the root.
    let parent = req.dest.parent().expect("a parent");
    std::fs::create_dir_all(parent.parent().expect("a grandparent")).expect("mkdir");
    std::os::unix::fs::symlink(planted.outside.path(), parent).expect("symlink");
    let err = store.run(&req).expect_err("a symlink on the way");
    assert_eq!(err.code, ErrorCode::Conflict, "{err}");
    assert!(err.message.contains("symlink"), "{err}");
    assert_eq!(
        std::fs::read_dir(planted.outside.path())
            .expect("the outside directory")
            .count(),
        0
    );
    // The destination itself as a symlink to a repository gitfleet made elsewhere.
    let other = EngineRoot::new();
    let elsewhere = other.request(&planted.daemon.url("planted"), Operation::Mirror);
    other.run(&elsewhere).expect("a mirror in another root");
    let req = store.request(&planted.daemon.url("planted"), Operation::Mirror);
    std::fs::create_dir_all(req.dest.parent().expect("a parent")).expect("mkdir");
    std::os::unix::fs::symlink(&elsewhere.dest, &req.dest).expect("symlink");
    let err = store.run(&req).expect_err("a symlinked destination");
    assert_eq!(err.code, ErrorCode::Conflict, "{err}");
}

#[test]
fn repositories_are_never_stored_inside_each_other() {
    let planted = Planted::new();
    let store = EngineRoot::new();
    // A mirror below a path, then a checkout at that path: the checkout finds a directory it
    // did not make and leaves it alone.
    let inner = store.request(&planted.daemon.url("planted/out/y"), Operation::Mirror);
    store.run(&inner).expect("the inner mirror");
    let outer = store.request(&planted.daemon.url("planted"), Operation::Checkout);
    assert!(inner.dest.starts_with(&outer.dest));
    let err = store.run(&outer).expect_err("a checkout around a mirror");
    assert_eq!(err.code, ErrorCode::Conflict, "{err}");
    fsck(&inner.dest).expect("the inner mirror is intact");
    // A mirror made by gitfleet is never a directory on another's way either.
    let store = EngineRoot::new();
    let mirror = store.request(&planted.daemon.url("planted"), Operation::Mirror);
    store.run(&mirror).expect("the mirror");
    let forged = Request {
        dest: mirror.dest.join("y.git"),
        ..store.request(&planted.daemon.url("planted/out/y"), Operation::Mirror)
    };
    let err = store.run(&forged).expect_err("inside a bare repository");
    assert_eq!(err.code, ErrorCode::Conflict, "{err}");
    fsck(&mirror.dest).expect("the mirror is intact");
}

#[test]
fn an_upstream_that_loses_its_refs_does_not_wipe_the_mirror() {
    let fx = Fixtures::new();
    let daemon = GitDaemon::start(&fx.root);
    let store = EngineRoot::new();
    let url = daemon.url("alpha.git");
    let req = store.request(&url, Operation::Mirror);
    store.run(&req).expect("the mirror");
    let before = refs(&req.dest);
    assert!(before.len() > 1);

    // Upstream suddenly lists no refs at all (a glitch, a wiped server, a hostile one).
    let upstream = fx.repo("alpha.git");
    let listed = run_git(&upstream, &["for-each-ref", "--format=%(refname)"]);
    for name in listed.lines() {
        run_git(&upstream, &["update-ref", "-d", name]);
    }
    let sync = store.request(&url, Operation::Sync);
    let err = store
        .run(&sync)
        .expect_err("a sync that would delete every ref");
    assert_eq!(err.code, ErrorCode::PruneRefused, "{err}");
    assert!(err.message.contains("--force-prune"), "{err}");
    assert_eq!(refs(&req.dest), before, "refs were deleted");
    fsck(&req.dest).expect("the mirror is intact");

    // Asked for explicitly, the deletion happens.
    let mut forced = sync;
    forced.limits.force_prune = true;
    let result = store.run(&forced).expect("a forced prune");
    assert_eq!(result.num_refs_deleted as usize, before.len(), "{result:?}");
    assert!(refs(&req.dest).is_empty());
}

/// A git:// server of our own for what no real server does (lying, endless, trickling): reads
/// the request line of each connection and hands the connection to `respond`. Its threads end
/// when the client hangs up (a write fails) or after a few connections.
fn fake_git_server(respond: fn(&mut std::net::TcpStream)) -> u16 {
    use std::io::Read;
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding");
    let port = listener.local_addr().expect("an address").port();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(8) {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request);
                respond(&mut stream);
            });
        }
    });
    port
}

/// One pkt-line.
fn pkt(line: &str) -> Vec<u8> {
    format!("{:04x}{line}", line.len() + 4).into_bytes()
}

const SOME_ID: &str = "1111111111111111111111111111111111111111";

fn hostile_request(store: &EngineRoot, port: u16) -> Request {
    store.request(&format!("git://127.0.0.1:{port}/o/r"), Operation::Mirror)
}

#[test]
fn server_text_cannot_steer_a_terminal_or_grow_without_bound() {
    let hostile = format!(
        "\u{1b}]0;owned\u{7}\u{1b}[2J\rreal error\u{202e}gnp.exe\u{2066} {}",
        "x".repeat(20_000)
    );
    static MESSAGE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    MESSAGE.get_or_init(|| hostile);
    let port = fake_git_server(|stream| {
        use std::io::Write;
        let message = MESSAGE.get().expect("set");
        let _ = stream.write_all(&pkt(&format!("ERR {message}\n")));
    });
    let store = EngineRoot::new();
    let req = store.request(&format!("git://127.0.0.1:{port}/o/r"), Operation::Mirror);
    let err = store.run(&req).expect_err("the server's error");
    let unsafe_char = |c: char| {
        c.is_control()
            || ('\u{202a}'..='\u{202e}').contains(&c)
            || ('\u{2066}'..='\u{2069}').contains(&c)
    };
    assert!(!err.message.chars().any(unsafe_char), "{:?}", err.message);
    assert!(err.message.contains("real error"), "{:?}", err.message);
    assert!(
        err.message.chars().count() <= gitfleet_git::MAX_MESSAGE_CHARS + 1,
        "{} characters",
        err.message.chars().count()
    );
}

#[test]
fn an_endless_ref_advertisement_is_cut_off() {
    let port = fake_git_server(|stream| {
        use std::io::Write;
        let first = format!("{SOME_ID} HEAD\0multi_ack side-band-64k ofs-delta\n");
        if stream.write_all(&pkt(&first)).is_err() {
            return;
        }
        for n in 0u64.. {
            let line = format!("{SOME_ID} refs/heads/branch-{n:020}\n");
            if stream.write_all(&pkt(&line)).is_err() {
                return;
            }
        }
    });
    let store = EngineRoot::new();
    let mut req = hostile_request(&store, port);
    req.limits.max_listing_bytes = 1 << 20;
    let err = store.run(&req).expect_err("an endless listing");
    assert_eq!(err.code, ErrorCode::LimitExceeded, "{err}");
    assert!(err.message.contains("while listing refs"), "{err}");
    assert!(!req.dest.exists());
}

#[test]
fn an_endless_ref_advertisement_over_http_is_cut_off() {
    let port = fake_git_server(|stream| {
        use std::io::Write;
        let head = "HTTP/1.1 200 OK\r\nContent-Type: application/x-git-upload-pack-advertisement\r\n\
                    Connection: close\r\n\r\n";
        let mut start = head.as_bytes().to_vec();
        start.extend(pkt("# service=git-upload-pack\n"));
        start.extend(b"0000");
        start.extend(pkt(&format!(
            "{SOME_ID} HEAD\0multi_ack side-band-64k ofs-delta\n"
        )));
        if stream.write_all(&start).is_err() {
            return;
        }
        for n in 0u64.. {
            let line = format!("{SOME_ID} refs/heads/branch-{n:020}\n");
            if stream.write_all(&pkt(&line)).is_err() {
                return;
            }
        }
    });
    let store = EngineRoot::new();
    let mut req = store.request(&format!("http://127.0.0.1:{port}/o/r"), Operation::Mirror);
    req.limits.max_listing_bytes = 1 << 20;
    let err = store.run(&req).expect_err("an endless listing");
    assert_eq!(err.code, ErrorCode::LimitExceeded, "{err}");
    assert!(err.message.contains("while listing refs"), "{err}");
    assert!(!req.dest.exists());
}

#[test]
fn too_many_refs_and_too_long_names_are_refused() {
    let port = fake_git_server(|stream| {
        use std::io::Write;
        let long = "x".repeat(2000);
        let mut out = pkt(&format!(
            "{SOME_ID} HEAD\0multi_ack side-band-64k ofs-delta\n"
        ));
        out.extend(pkt(&format!("{SOME_ID} refs/heads/{long}\n")));
        out.extend(b"0000");
        let _ = stream.write_all(&out);
    });
    let store = EngineRoot::new();
    let err = store
        .run(&hostile_request(&store, port))
        .expect_err("a long ref name");
    assert_eq!(err.code, ErrorCode::LimitExceeded, "{err}");
    assert!(err.message.contains("ref name longer"), "{err}");
    let mut req = hostile_request(&store, port);
    req.limits.max_refs = 1;
    req.limits.max_ref_name = 4096;
    let err = store.run(&req).expect_err("two refs");
    assert_eq!(err.code, ErrorCode::LimitExceeded, "{err}");
    assert!(err.message.contains("more than 1 refs"), "{err}");
}

#[test]
fn a_trickling_server_is_dropped() {
    let port = fake_git_server(|stream| {
        use std::io::Write;
        // A byte now and then: never silent for the stall limit, never done.
        for byte in pkt(&format!("{SOME_ID} HEAD\0multi_ack\n"))
            .into_iter()
            .cycle()
        {
            if stream.write_all(&[byte]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    });
    let store = EngineRoot::new();
    let mut req = hostile_request(&store, port);
    req.limits.min_rate = 100;
    req.limits.rate_window = Duration::from_secs(2);
    let err = store.run(&req).expect_err("too slow");
    assert_eq!(err.code, ErrorCode::LimitExceeded, "{err}");
    assert!(err.message.contains("bytes/s"), "{err}");
}

#[test]
fn transfer_and_object_size_limits_hold() {
    let fx = Fixtures::new();
    let daemon = GitDaemon::start(&fx.root);
    let store = EngineRoot::new();
    // big.git holds four incompressible 1 MiB blobs.
    let mut req = store.request(&daemon.url("big.git"), Operation::Mirror);
    req.limits.max_bytes = 1 << 20;
    let err = store.run(&req).expect_err("over the transfer limit");
    assert_eq!(err.code, ErrorCode::LimitExceeded, "{err}");
    assert!(err.message.contains("in one transfer"), "{err}");
    assert!(!req.dest.exists());

    let mut req = store.request(&daemon.url("big.git"), Operation::Mirror);
    req.limits.max_object_bytes = 512 << 10;
    let err = store.run(&req).expect_err("over the object size limit");
    assert_eq!(err.code, ErrorCode::LimitExceeded, "{err}");
    assert!(!req.dest.exists());
    store
        .run(&store.request(&daemon.url("big.git"), Operation::Mirror))
        .expect("within the default limits");
}

#[test]
fn a_server_that_advertises_what_it_never_sends_fails_the_clone() {
    let port = fake_git_server(|stream| {
        use std::io::{Read, Write};
        let mut out = pkt(&format!(
            "{SOME_ID} HEAD\0multi_ack multi_ack_detailed side-band-64k ofs-delta\n"
        ));
        out.extend(pkt(&format!("{SOME_ID} refs/heads/main\n")));
        out.extend(b"0000");
        if stream.write_all(&out).is_err() {
            return;
        }
        // Read the wants up to `done`, then answer with an empty pack.
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        while !request.windows(4).any(|w| w == b"done") {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => request.extend_from_slice(&buf[..n]),
            }
        }
        // An empty pack: the header and its SHA-1, on side band 1, then a flush.
        let mut pack = b"\x01PACK\0\0\0\x02\0\0\0\0".to_vec();
        pack.extend([
            0x02, 0x9d, 0x08, 0x82, 0x3b, 0xd8, 0xa8, 0xea, 0xb5, 0x10, 0xad, 0x6a, 0xc7, 0x5c,
            0x82, 0x3c, 0xfd, 0x3e, 0xd3, 0x1e,
        ]);
        let mut out = pkt("NAK\n");
        out.extend(format!("{:04x}", pack.len() + 4).into_bytes());
        out.extend(pack);
        out.extend(b"0000");
        let _ = stream.write_all(&out);
    });
    let store = EngineRoot::new();
    let req = hostile_request(&store, port);
    let err = store.run(&req).expect_err("a ref to an object never sent");
    assert_eq!(err.code, ErrorCode::Protocol, "{err}");
    assert!(err.message.contains("did not send it"), "{err}");
    assert!(!req.dest.exists(), "a broken mirror was published");
}

/// A git:// server that passes connections through to `upstream` until `lie` is set, and then
/// advertises `refs/heads/main` at an object it never sends: an empty pack, whatever is asked.
fn turncoat_server(upstream: u16, lie: std::sync::Arc<std::sync::atomic::AtomicBool>) -> u16 {
    use std::io::{Read, Write};
    use std::sync::atomic::Ordering;
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding");
    let port = listener.local_addr().expect("an address").port();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(16) {
            let Ok(mut client) = stream else { return };
            if !lie.load(Ordering::SeqCst) {
                let Ok(mut server) = std::net::TcpStream::connect(("127.0.0.1", upstream)) else {
                    return;
                };
                let (mut client_in, mut server_out) = (
                    client.try_clone().expect("a handle"),
                    server.try_clone().expect("a handle"),
                );
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut client_in, &mut server_out);
                    let _ = server_out.shutdown(std::net::Shutdown::Write);
                });
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut server, &mut client);
                });
                continue;
            }
            std::thread::spawn(move || {
                // The request line, then the advertisement.
                let Some(_) = read_pkt(&mut client) else {
                    return;
                };
                let mut out = pkt(&format!(
                    "{SOME_ID} HEAD\0multi_ack_detailed side-band-64k ofs-delta\n"
                ));
                out.extend(pkt(&format!("{SOME_ID} refs/heads/main\n")));
                out.extend(b"0000");
                if client.write_all(&out).is_err() {
                    return;
                }
                // Wants, a flush, then haves: each later flush gets a NAK, `done` the pack.
                let mut flushes = 0;
                loop {
                    match read_pkt(&mut client) {
                        None => return,
                        Some(None) => {
                            flushes += 1;
                            if flushes > 1 && client.write_all(&pkt("NAK\n")).is_err() {
                                return;
                            }
                        }
                        Some(Some(line)) if line.starts_with(b"done") => break,
                        Some(Some(_)) => {}
                    }
                }
                let mut out = pkt("NAK\n");
                out.extend(empty_pack_on_band_one());
                out.extend(b"0000");
                let _ = client.write_all(&out);
                let mut rest = Vec::new();
                let _ = client.read_to_end(&mut rest);
            });
        }
    });
    port
}

/// One pkt-line from `stream`: `Some(None)` for a flush, `None` at the end.
fn read_pkt(stream: &mut impl std::io::Read) -> Option<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).ok()?;
    let len = usize::from_str_radix(std::str::from_utf8(&len).ok()?, 16).ok()?;
    if len < 4 {
        return Some(None);
    }
    let mut line = vec![0u8; len - 4];
    stream.read_exact(&mut line).ok()?;
    Some(Some(line))
}

/// An empty pack (its header and SHA-1) as one pkt-line on side band 1.
fn empty_pack_on_band_one() -> Vec<u8> {
    let mut pack = b"\x01PACK\0\0\0\x02\0\0\0\0".to_vec();
    pack.extend([
        0x02, 0x9d, 0x08, 0x82, 0x3b, 0xd8, 0xa8, 0xea, 0xb5, 0x10, 0xad, 0x6a, 0xc7, 0x5c, 0x82,
        0x3c, 0xfd, 0x3e, 0xd3, 0x1e,
    ]);
    let mut out = format!("{:04x}", pack.len() + 4).into_bytes();
    out.extend(pack);
    out
}

#[test]
fn a_sync_puts_back_refs_whose_objects_never_came() {
    let fx = Fixtures::new();
    let daemon = GitDaemon::start(&fx.root);
    let lie = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let port = turncoat_server(daemon.port(), lie.clone());
    let store = EngineRoot::new();
    let url = format!("git://127.0.0.1:{port}/alpha.git");
    let req = store.request(&url, Operation::Mirror);
    store.run(&req).expect("the mirror, passed through");
    let before = refs(&req.dest);
    assert!(before.contains_key("refs/heads/main"), "{before:?}");

    lie.store(true, std::sync::atomic::Ordering::SeqCst);
    let sync = store.request(&url, Operation::Sync);
    let err = store.run(&sync).expect_err("a tip that never came");
    assert_eq!(err.code, ErrorCode::Protocol, "{err}");
    assert!(err.message.contains("did not send it"), "{err}");
    // Every ref is where it was and the mirror whole: nothing is pruned by a failed sync.
    assert_eq!(refs(&req.dest), before);
    fsck(&req.dest).expect("a whole mirror");
}

#[test]
fn the_checked_address_is_the_one_connected_to() {
    // `.invalid` never resolves (RFC 6761): a transfer that looked the name up again would fail.
    let fx = Fixtures::new();
    let daemon = GitDaemon::start(&fx.root);
    let http = HttpServer::start(&fx.root, HttpOptions::default());
    let store = EngineRoot::new();
    for (scheme, port) in [("git", daemon.port()), ("http", http.port())] {
        let url = format!("{scheme}://gitfleet-pinned.invalid:{port}/alpha.git");
        let mut req = store.request(&url, Operation::Mirror);
        let err = store.run(&req).expect_err("a name that does not resolve");
        assert_eq!(err.code, ErrorCode::Network, "{err}");
        req.addresses = Some(vec![([127, 0, 0, 1], port).into()]);
        store
            .run(&req)
            .expect("the mirror from the checked address");
        assert_eq!(refs(&req.dest), refs(&fx.repo("alpha.git")), "{scheme}");
    }
}

#[test]
fn locks_a_crash_left_are_cleared_and_a_live_one_is_reported() {
    let fx = Fixtures::new();
    let daemon = GitDaemon::start(&fx.root);
    let url = daemon.url("alpha.git");
    let first = EngineRoot::new();
    let req = first.request(&url, Operation::Mirror);
    first.run(&req).expect("the mirror");
    // A crash in the middle of a ref update, an hour ago.
    let stale = [
        req.dest.join("packed-refs.lock"),
        req.dest.join("refs/heads/main.lock"),
    ];
    let an_hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
    for lock in &stale {
        std::fs::create_dir_all(lock.parent().expect("a parent")).expect("mkdir");
        std::fs::File::create(lock)
            .and_then(|f| f.set_modified(an_hour_ago))
            .expect("an old lock");
    }
    fx.mutate("alpha.git");
    first
        .run(&first.request(&url, Operation::Sync))
        .expect("stale locks do not block a sync");
    assert!(stale.iter().all(|lock| !lock.exists()));
    fsck(&req.dest).expect("intact");

    // A lock taken after this process opened the root is someone else's, working right now.
    let live = req.dest.join("packed-refs.lock");
    std::fs::write(&live, "").expect("a live lock");
    let err = first
        .run(&first.request(&url, Operation::Sync))
        .expect_err("a live lock");
    assert_eq!(err.code, ErrorCode::Storage, "{err}");
    assert!(live.exists());
}
