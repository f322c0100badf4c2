//! Task identity, in one place: what a request names (a URL and an operation, or an `init` name),
//! mapped to the task id and the storage path below any root.
//!
//! Every caller that turns user input, a stored record or a job from the wire into a task goes
//! through [`Target`]: the plan functions, the cluster's API and nodes, and the command line's
//! look-ups. The mapping is injective — two different repositories never get one path — because
//! the pieces it joins cannot be confused with each other (see [`RepoUrl::storage_segments`]): a
//! bare repository's path always ends in `.git` and no other segment may, a working tree's never
//! does, hosts cannot spell a port or `_file`/`_local`. The id is a hash of the path; a record
//! found under an id is also checked to name the same path and source ([`Target::check_stored`]),
//! so not even a hash collision can re-point a task.

use std::path::{Path, PathBuf};

use gitfleet_proto::{CloneTask, ErrorCode, Operation, TaskError};

use crate::url::LocalPaths;
use crate::{Policy, RepoUrl, UrlError};

/// The segment under which `gitfleet init` puts new repositories (no host can be spelled so).
const INIT_DIR: &str = "_local";

/// One task's repository: its id, its path below the root and where it comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    id: String,
    relative: PathBuf,
    source: Source,
}

/// Where a task's repository comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Fetched from a URL.
    Remote(Box<RepoUrl>),
    /// Created empty by `gitfleet init`.
    Init(InitName),
}

impl Target {
    /// The repository `input` names for a clone (`mirror`, `bare`: a bare repository;
    /// `checkout`: a working tree), checked against `policy`. A local path is resolved only if
    /// the policy allows local paths: otherwise it is refused without looking at the file system.
    pub fn for_url(
        input: &str,
        operation: Operation,
        policy: &Policy,
    ) -> Result<Target, TaskError> {
        let local = if policy.allow_local {
            LocalPaths::Resolve
        } else {
            LocalPaths::Refuse
        };
        let url = RepoUrl::parse_with(input, local).map_err(task_error)?;
        policy.check(&url).map_err(task_error)?;
        Target::remote(url, operation)
    }

    /// The repository `url` names for `operation`, which must be a clone.
    pub fn remote(url: RepoUrl, operation: Operation) -> Result<Target, TaskError> {
        let bare = match operation {
            Operation::Mirror | Operation::Bare => true,
            Operation::Checkout => false,
            Operation::Sync | Operation::Init => {
                return Err(TaskError::new(
                    ErrorCode::Internal,
                    format!("a {operation} names no new repository"),
                ));
            }
        };
        let relative = join(url.storage_segments(), bare);
        Ok(Target {
            id: task_id(&relative),
            relative,
            source: Source::Remote(Box::new(url)),
        })
    }

    /// The repository `gitfleet init` makes for `name` (`owner/name`).
    pub fn for_init(name: &str, worktree: bool) -> Result<Target, TaskError> {
        let name = InitName::parse(name).map_err(task_error)?;
        let mut segments = vec![INIT_DIR.to_string()];
        segments.extend(name.segments.iter().cloned());
        let relative = join(segments, !worktree);
        Ok(Target {
            id: task_id(&relative),
            relative,
            source: Source::Init(name),
        })
    }

    /// The target of a stored task, derived again from its URL and the shape of its path (a
    /// bare repository's ends in `.git`). The stored path and id are only checked, never used:
    /// a record or a job that does not match what its URL derives to is refused.
    pub fn of_task(task: &CloneTask) -> Result<Target, TaskError> {
        Target::of_parts(&task.id, &task.url, task.operation, &task.path)
    }

    /// [`Target::of_task`] for the parts of a task that a job carries.
    pub fn of_parts(
        id: &str,
        url: &str,
        operation: Operation,
        path: &str,
    ) -> Result<Target, TaskError> {
        let bare = path.ends_with(".git");
        let target = match operation {
            Operation::Init => Target::for_init(url, !bare)?,
            _ => {
                let url = RepoUrl::parse_with(url, LocalPaths::AsStored).map_err(task_error)?;
                let as_cloned = if bare {
                    Operation::Mirror
                } else {
                    Operation::Checkout
                };
                Target::remote(url, as_cloned)?
            }
        };
        if target.id != id || !Path::new(path).ends_with(&target.relative) {
            return Err(TaskError::new(
                ErrorCode::Conflict,
                format!(
                    "task {} does not match its url {}: refusing it",
                    quote_id(id),
                    target.display()
                ),
            ));
        }
        Ok(target)
    }

    /// The ids that `input` may refer to in look-ups (`status`, `cancel`, `sync` by name): the
    /// input itself when it has the form of a task id, and the task of every kind of repository
    /// the input could name. Never an error: what cannot be parsed names nothing.
    pub fn lookup_ids(input: &str, policy: &Policy) -> Vec<String> {
        let mut ids = Vec::new();
        if is_task_id(input) {
            ids.push(input.to_string());
        }
        for operation in [Operation::Mirror, Operation::Checkout] {
            if let Ok(target) = Target::for_url(input, operation, policy) {
                ids.push(target.id);
            }
        }
        for worktree in [false, true] {
            if let Ok(target) = Target::for_init(input, worktree) {
                ids.push(target.id);
            }
        }
        ids
    }

    /// Refuses a request for this target when the task stored under its id came from elsewhere:
    /// another path (a hash collision) or the same path over another scheme (`https` where it
    /// was `git`). A task's source never changes silently.
    pub fn check_stored(&self, stored: &CloneTask) -> Result<(), TaskError> {
        let same = match Target::of_task(stored) {
            Ok(theirs) => {
                theirs.relative == self.relative
                    && match (&theirs.source, &self.source) {
                        (Source::Remote(a), Source::Remote(b)) => a.same_source(b),
                        (Source::Init(a), Source::Init(b)) => a == b,
                        _ => false,
                    }
            }
            Err(_) => false,
        };
        if same {
            return Ok(());
        }
        Err(TaskError::new(
            ErrorCode::Conflict,
            format!(
                "{} is stored as task {} from {}; a task's source cannot change",
                self.display(),
                self.id,
                crate::secret::scrub_userinfo(&stored.url)
            ),
        ))
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The path below any root, the same on every node.
    pub fn relative(&self) -> &Path {
        &self.relative
    }

    pub fn source(&self) -> &Source {
        &self.source
    }

    /// The URL, when the repository is fetched from one.
    pub fn url(&self) -> Option<&RepoUrl> {
        match &self.source {
            Source::Remote(url) => Some(url),
            Source::Init(_) => None,
        }
    }

    /// A bare repository (`<name>.git`), not a working tree.
    pub fn is_bare(&self) -> bool {
        self.relative.to_string_lossy().ends_with(".git")
    }

    /// What records show and store as the task's `url`: the URL without credentials, or the
    /// `init` name.
    pub fn display(&self) -> String {
        match &self.source {
            Source::Remote(url) => url.display(),
            Source::Init(name) => name.as_str(),
        }
    }
}

fn task_error(e: UrlError) -> TaskError {
    TaskError::new(e.code, e.message)
}

fn join(mut segments: Vec<String>, bare: bool) -> PathBuf {
    if bare && let Some(last) = segments.last_mut() {
        last.push_str(".git");
    }
    segments.into_iter().collect()
}

/// The stable id of the task for the repository stored at `relative` (a path below the root):
/// 16 hex digits of its FNV-1a hash. Derived from the storage path, so every spelling of one
/// repository maps to one id.
fn task_id(relative: &Path) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in relative.to_string_lossy().bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// Whether `input` has the form of a task id: 16 lowercase hex digits.
pub fn is_task_id(input: &str) -> bool {
    input.len() == 16
        && input
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn quote_id(id: &str) -> String {
    let shown: String = id.chars().take(40).flat_map(char::escape_debug).collect();
    format!("'{shown}'")
}

/// The name of a repository created by `gitfleet init`: `owner/name`, validated like a URL path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitName {
    segments: Vec<String>,
}

impl InitName {
    pub fn parse(input: &str) -> Result<InitName, UrlError> {
        // The same segment rules as URL paths: no '..', no leading '-', no control characters,
        // no '.git' but at the end.
        let url = RepoUrl::parse(&format!("https://init.invalid/{}", input.trim_matches('/')))
            .map_err(|e| UrlError {
                code: e.code,
                message: e.message.replace("https://init.invalid/", ""),
            })?;
        Ok(InitName {
            segments: url.storage_segments().into_iter().skip(1).collect(),
        })
    }

    pub fn as_str(&self) -> String {
        self.segments.join("/")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mirror(input: &str) -> Target {
        Target::for_url(input, Operation::Mirror, &Policy::permissive()).expect(input)
    }

    fn checkout(input: &str) -> Target {
        Target::for_url(input, Operation::Checkout, &Policy::permissive()).expect(input)
    }

    #[test]
    fn spellings_of_one_repository_are_one_task() {
        let a = mirror("https://Host.example/o/r");
        assert_eq!(a.relative(), Path::new("host.example/o/r.git"));
        for spelling in [
            "https://host.example/o/r.git",
            "https://host.example/o/r/",
            "https://host.example:443/o//r.git/",
            "https://bob@host.example/o/r",
        ] {
            assert_eq!(mirror(spelling).id(), a.id(), "{spelling}");
        }
        assert_eq!(
            checkout("https://host.example/o/r").relative(),
            Path::new("host.example/o/r")
        );
    }

    /// Pairs of inputs that used to land on one path or id.
    #[test]
    fn different_repositories_never_share_a_path() {
        let pairs = [
            (
                mirror("git://[::1]:9419/o/r"),
                mirror("git://[::1:9419]/o/r"),
            ),
            (
                mirror("https://h.example:8443/o/r"),
                mirror("https://h.example/8443/o/r"),
            ),
            (
                checkout("https://h.example/o/r"),
                mirror("https://h.example/o/r"),
            ),
        ];
        for (a, b) in &pairs {
            assert_ne!(a.relative(), b.relative());
            assert_ne!(a.id(), b.id());
        }
        assert_eq!(
            mirror("git://[::1]:9419/o/r").relative(),
            Path::new("[__1]_9419/o/r.git")
        );
    }

    #[test]
    fn inputs_that_could_collide_are_refused() {
        for input in [
            // Would be stored where the mirror of `.../r` is.
            "https://h.example/o/r.git.git",
            // A directory named like a bare repository: inside the mirror of `.../o`.
            "https://h.example/o.git/r",
            // A host spelled like a port, a local path or an init name.
            "https://h_8443/o/r",
            "https://_file/tmp/r",
            "https://_local/o/r",
        ] {
            let err = Target::for_url(input, Operation::Checkout, &Policy::permissive())
                .expect_err(input);
            assert_eq!(err.code, ErrorCode::InvalidUrl, "{input}: {err}");
        }
    }

    #[test]
    fn init_targets_keep_bare_and_worktree_apart() {
        let bare = Target::for_init("team/tools", false).expect("bare");
        let worktree = Target::for_init("team/tools", true).expect("worktree");
        assert_eq!(bare.relative(), Path::new("_local/team/tools.git"));
        assert_eq!(worktree.relative(), Path::new("_local/team/tools"));
        let ids = Target::lookup_ids("team/tools", &Policy::strict());
        assert!(ids.contains(&bare.id().to_string()) && ids.contains(&worktree.id().to_string()));
        assert!(Target::for_init("../etc", false).is_err());
        assert!(Target::for_init("team/-x", false).is_err());
    }

    #[test]
    fn a_task_is_re_derived_from_its_url_and_must_match() {
        let target = mirror("https://h.example/o/r");
        let mut task = CloneTask::new(
            target.id().to_string(),
            target.display(),
            Operation::Mirror,
            format!("/srv/mirrors/{}", target.relative().display()),
            gitfleet_proto::Timestamp::UNIX_EPOCH,
        );
        assert_eq!(Target::of_task(&task).expect("matches"), target);
        // A job that names one repository's id with another's URL is refused.
        task.url = "https://h.example/o/other".into();
        assert_eq!(
            Target::of_task(&task).expect_err("mismatch").code,
            ErrorCode::Conflict
        );
    }

    #[test]
    fn a_source_never_changes_silently() {
        let stored = mirror("git://h.example/o/r");
        let task = CloneTask::new(
            stored.id().to_string(),
            stored.display(),
            Operation::Mirror,
            stored.relative().to_string_lossy().into_owned(),
            gitfleet_proto::Timestamp::UNIX_EPOCH,
        );
        assert!(stored.check_stored(&task).is_ok());
        assert!(
            mirror("git://h.example/o/r.git")
                .check_stored(&task)
                .is_ok()
        );
        let https = mirror("https://h.example/o/r");
        assert_eq!(https.id(), stored.id());
        assert_eq!(
            https.check_stored(&task).expect_err("scheme").code,
            ErrorCode::Conflict
        );
    }

    #[test]
    fn refused_local_paths_are_not_looked_up() {
        let err = Target::for_url("/etc", Operation::Mirror, &Policy::strict()).expect_err("local");
        let missing =
            Target::for_url("/no/such/dir", Operation::Mirror, &Policy::strict()).expect_err("x");
        // The same answer whether or not the path exists.
        assert_eq!(err.code, ErrorCode::PolicyDenied);
        assert_eq!(missing.code, ErrorCode::PolicyDenied);
    }

    /// Where a request's repository may be stored: below the root, under its host (or
    /// `_local/`), and nowhere a path from the input could escape to. The API, the node and
    /// the command line all build paths this way.
    #[test]
    fn every_input_is_stored_below_its_host_or_refused() {
        use ErrorCode::{InvalidUrl, PolicyDenied};
        let table: &[(&str, Result<&str, ErrorCode>)] = &[
            ("https://h.example/o/r", Ok("h.example/o/r.git")),
            ("https://H.EXAMPLE/O/R", Ok("h.example/O/R.git")),
            ("git@h.example:o/r", Ok("h.example/o/r.git")),
            ("ssh://h.example/~user/r", Ok("h.example/~user/r.git")),
            (
                "https://h.example/.gitfleet/x",
                Ok("h.example/.gitfleet/x.git"),
            ),
            (
                "https://h.example/_local/o/r",
                Ok("h.example/_local/o/r.git"),
            ),
            ("https://h.example/o/.git", Ok("h.example/o.git")),
            ("https://h.example/../etc/passwd", Err(PolicyDenied)),
            ("https://h.example/o/../../etc", Err(PolicyDenied)),
            ("https://h.example/o/%2e%2e/x", Err(PolicyDenied)),
            ("https://h.example/o/%2E%2E%2Fx", Err(PolicyDenied)),
            ("https://h.example/o/r/..", Err(PolicyDenied)),
            ("https://h.example/./o/r", Err(PolicyDenied)),
            ("git@h.example:../r", Err(PolicyDenied)),
            ("https://h.example/-o/r", Err(PolicyDenied)),
            ("https://-h.example/o/r", Err(PolicyDenied)),
            ("--upload-pack=touch /tmp/x", Err(PolicyDenied)),
            ("ext::sh -c touch% /tmp/pwned", Err(PolicyDenied)),
            ("https://h.example/o/.git/hooks", Err(InvalidUrl)),
            ("https://h.example/o/r%00x", Err(InvalidUrl)),
            ("https://h.example/o/r%0Ax", Err(InvalidUrl)),
            ("https://h.example/o\\r", Err(InvalidUrl)),
            ("https://h.example%2F..%2Fx/o/r", Err(InvalidUrl)),
            ("https://../o/r", Err(InvalidUrl)),
            ("https://h.example/", Err(InvalidUrl)),
            ("https://h.example//", Err(InvalidUrl)),
        ];
        for (input, want) in table {
            let got = Target::for_url(input, Operation::Mirror, &Policy::permissive());
            match (got, want) {
                (Ok(target), Ok(path)) => {
                    assert_eq!(target.relative(), Path::new(path), "{input}");
                    let parts: Vec<_> = target.relative().components().collect();
                    assert!(
                        parts
                            .iter()
                            .all(|c| matches!(c, std::path::Component::Normal(_))),
                        "{input}: {parts:?}"
                    );
                }
                (Err(err), Err(code)) => assert_eq!(err.code, *code, "{input}: {err}"),
                (got, want) => panic!("{input}: got {got:?}, want {want:?}"),
            }
        }
        let inits: &[(&str, bool, Result<&str, ErrorCode>)] = &[
            ("team/tools", false, Ok("_local/team/tools.git")),
            ("team/tools", true, Ok("_local/team/tools")),
            (".gitfleet/x", true, Ok("_local/.gitfleet/x")),
            ("a/b.git", true, Ok("_local/a/b")),
            ("../x", false, Err(PolicyDenied)),
            ("a/../b", false, Err(PolicyDenied)),
            ("team/-x", false, Err(PolicyDenied)),
        ];
        for (name, worktree, want) in inits {
            let got = Target::for_init(name, *worktree).map(|t| t.relative().to_path_buf());
            match (got, want) {
                (Ok(path), Ok(expected)) => assert_eq!(path, Path::new(expected), "{name}"),
                (Err(err), Err(code)) => assert_eq!(err.code, *code, "{name}: {err}"),
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }
}
