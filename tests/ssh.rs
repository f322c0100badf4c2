//! ssh remotes against a real OpenSSH server on 127.0.0.1 (keys and known_hosts made for the
//! run): host keys are checked strictly against the operator's known_hosts, and a mirror over
//! ssh equals `git clone --mirror` of the same repository.

use std::time::Duration;

use gitfleet_git::{Control, Layout, Limits, Policy, Redactor, Request, SshSettings, Target};
use gitfleet_proto::Operation;
use gitfleet_tests::{Fixtures, SshServer, objects, refs};

#[test]
fn mirror_over_ssh_checks_the_host_key_and_equals_the_source() {
    let fx = Fixtures::new();
    let server = SshServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = Layout::open(&dir.path().join("root")).expect("a root");
    let source = fx.repo("alpha.git");
    let url = server.url(&source);
    let target = Target::for_url(&url, Operation::Mirror, &Policy::permissive()).expect("a target");
    let req = Request {
        url: target.url().expect("a url").clone(),
        operation: Operation::Mirror,
        dest: layout.path_of(&target),
        credentials: None,
        limits: Limits {
            time_limit: Duration::from_secs(120),
            stall_limit: Duration::from_secs(60),
            ..Limits::default()
        },
        redactor: Redactor::default(),
        addresses: None,
    };
    let run = || gitfleet_git::execute(&req, &layout, &Control::new(), &mut |_| {});

    // Another key where the server's should be: refused, nothing stored.
    gitfleet_git::configure_ssh(SshSettings {
        identity: Some(server.client_key()),
        known_hosts: Some(server.wrong_known_hosts()),
    })
    .expect("ssh settings");
    let err = run().expect_err("a host key that is not the known one");
    // ssh says why on its standard error ("Host key ... has changed"); gix reports the
    // connection ending.
    assert_eq!(err.code, gitfleet_proto::ErrorCode::Network, "{err}");
    assert!(!req.dest.exists(), "{err}");

    gitfleet_git::configure_ssh(SshSettings {
        identity: Some(server.client_key()),
        known_hosts: Some(server.known_hosts()),
    })
    .expect("ssh settings");
    run().expect("the mirror over ssh");
    assert_eq!(refs(&req.dest), refs(&source));
    assert_eq!(objects(&req.dest), objects(&source));
    // And a sync over ssh.
    let sync = Request {
        operation: Operation::Sync,
        ..req.clone()
    };
    gitfleet_git::execute(&sync, &layout, &Control::new(), &mut |_| {}).expect("a sync over ssh");
}
