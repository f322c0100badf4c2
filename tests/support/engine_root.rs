//! A storage root of its own for one engine test: the request the planner would make for a
//! URL, and running it.

use std::path::PathBuf;
use std::time::Duration;

use gitfleet_git::{Control, Layout, Limits, Policy, Redactor, Request, Target};
use gitfleet_proto::{Operation, SyncResult, TaskError};
use tempfile::TempDir;

use crate::wait_until;

pub struct EngineRoot {
    _dir: TempDir,
    pub layout: Layout,
}

impl Default for EngineRoot {
    fn default() -> Self {
        Self::new()
    }
}

impl EngineRoot {
    pub fn new() -> EngineRoot {
        gitfleet_git::init_tls();
        let dir = tempfile::tempdir().expect("creating a temporary directory");
        let layout = Layout::open(&dir.path().join("root")).expect("opening the storage root");
        EngineRoot { _dir: dir, layout }
    }

    /// The request the planner makes for `url`: path and id from [`Target`], limits from
    /// [`test_limits`].
    pub fn request(&self, url: &str, operation: Operation) -> Request {
        let shape = match operation {
            Operation::Sync => Operation::Mirror,
            other => other,
        };
        let target =
            Target::for_url(url, shape, &Policy::permissive()).expect("the test url is valid");
        Request {
            url: target.url().expect("a remote target").clone(),
            operation,
            dest: self.layout.path_of(&target),
            credentials: None,
            limits: test_limits(),
            redactor: Redactor::default(),
            addresses: None,
        }
    }

    pub fn run(&self, req: &Request) -> Result<SyncResult, TaskError> {
        gitfleet_git::execute(req, &self.layout, &Control::new(), &mut |_| {})
    }

    /// What is in the staging directory.
    pub fn staging(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.layout.state_dir().join("staging"))
            .expect("reading the staging directory")
            .map(|e| e.expect("a staging entry").path())
            .collect()
    }

    /// The engine's git thread removes its staging directory when it ends, which can be a
    /// moment after `execute` returned (an abandoned thread ends when its read returns).
    pub fn wait_staging_empty(&self, timeout: Duration) {
        wait_until(timeout, "the staging directory is empty", || {
            self.staging().is_empty()
        });
    }
}

/// Generous enough never to trip in a healthy run on a loaded machine; the limit tests set
/// their own.
pub fn test_limits() -> Limits {
    Limits {
        time_limit: Duration::from_secs(300),
        stall_limit: Duration::from_secs(60),
        grace: Duration::from_secs(2),
        ..Limits::default()
    }
}
