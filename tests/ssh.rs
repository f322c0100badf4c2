//! ssh remotes against a real OpenSSH server on 127.0.0.1 (keys and known_hosts made for the
//! run): host keys are checked strictly against the operator's known_hosts, and a mirror over
//! ssh equals `git clone --mirror` of the same repository.

use std::collections::BTreeMap;
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
        ..Default::default()
    })
    .expect("ssh settings");
    let err = run().expect_err("a host key that is not the known one");
    // ssh says why on its standard error ("Host key ... has changed"); gix reports the
    // connection ending.
    assert_eq!(err.code, gitfleet_proto::ErrorCode::Network, "{err}");
    assert!(!req.dest.exists(), "{err}");
    // ssh's own words name the cause, instead of going to the terminal raw.
    assert!(err.message.contains("host key"), "{err}");

    // A key of its own for the host: the default key is not offered to it.
    gitfleet_git::configure_ssh(SshSettings {
        identity: Some(server.client_key()),
        host_identities: BTreeMap::from([("127.0.0.1".into(), server.other_key())]),
        known_hosts: Some(server.known_hosts()),
    })
    .expect("ssh settings");
    let err = run().expect_err("a key the server does not accept");
    assert_eq!(err.code, gitfleet_proto::ErrorCode::AuthFailed, "{err}");
    assert!(!req.dest.exists(), "{err}");

    gitfleet_git::configure_ssh(SshSettings {
        identity: Some(server.client_key()),
        known_hosts: Some(server.known_hosts()),
        ..Default::default()
    })
    .expect("ssh settings");
    run().expect("the mirror over ssh");
    assert_eq!(refs(&req.dest), refs(&source));
    assert_eq!(objects(&req.dest), objects(&source));
    // And a sync over ssh, connecting to the address a policy checked (the host key is still
    // looked up under the URL's host).
    let sync = Request {
        operation: Operation::Sync,
        addresses: Some(vec![([127, 0, 0, 1], server.port()).into()]),
        ..req.clone()
    };
    gitfleet_git::execute(&sync, &layout, &Control::new(), &mut |_| {}).expect("a sync over ssh");
}
