//! Every NATS subject, stream and bucket name gitfleet uses.
//!
//! **Invariant: no other module or crate spells a subject.**

/// Names under one prefix (default `gitfleet`), so that several gitfleet clusters can share a
/// NATS deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subjects {
    prefix: String,
}

/// The API operations, one subject each: `<prefix>.api.<op>`.
pub const API_OPERATIONS: [&str; 12] = [
    "submit",
    "sync",
    "get",
    "list",
    "log",
    "cancel",
    "nodes",
    "resume",
    "schedule",
    "archive",
    "unarchive",
    "remove",
];

impl Subjects {
    /// `prefix` must be one or more NATS tokens of `[A-Za-z0-9_-]`.
    pub fn new(prefix: &str) -> Result<Subjects, String> {
        let ok = !prefix.is_empty()
            && prefix.split('.').all(|t| {
                !t.is_empty()
                    && t.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if !ok {
            return Err(format!(
                "invalid subject prefix '{prefix}': use letters, digits, '-', '_' and '.'"
            ));
        }
        Ok(Subjects {
            prefix: prefix.to_string(),
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn api(&self, operation: &str) -> String {
        format!("{}.api.{operation}", self.prefix)
    }

    pub fn api_all(&self) -> String {
        format!("{}.api.>", self.prefix)
    }

    /// The operation of an API subject, if it is one.
    pub fn api_operation<'a>(&self, subject: &'a str) -> Option<&'a str> {
        subject.strip_prefix(&self.prefix)?.strip_prefix(".api.")
    }

    pub fn jobs(&self, node: &str) -> String {
        format!("{}.jobs.{node}", self.prefix)
    }

    pub fn jobs_all(&self) -> String {
        format!("{}.jobs.>", self.prefix)
    }

    /// Status events of one task: state transitions and progress samples.
    pub fn status(&self, task_id: &str) -> String {
        format!("{}.status.{task_id}", self.prefix)
    }

    pub fn status_all(&self) -> String {
        format!("{}.status.>", self.prefix)
    }

    /// Cancel requests, to every node (the payload is a task id).
    pub fn cancel(&self) -> String {
        format!("{}.control.cancel", self.prefix)
    }

    /// A task's schedule changed in the bucket (resume, schedule), to every node (the payload
    /// is a task id): its owner reads the record again.
    pub fn rescheduled(&self) -> String {
        format!("{}.control.schedule", self.prefix)
    }

    /// Removed tasks, to every node (a [`gitfleet_proto::RemovalNotice`]): the node that
    /// holds the repository deletes it.
    pub fn removals(&self) -> String {
        format!("{}.control.remove", self.prefix)
    }

    /// Hosts paused because they asked to slow down, to every node (a
    /// [`gitfleet_proto::HostPauseNotice`]): each pauses the host too.
    pub fn host_pauses(&self) -> String {
        format!("{}.control.pause", self.prefix)
    }

    /// Repositories placement moved that their new owner completed, to every node (a
    /// [`gitfleet_proto::HandoverNotice`]): the former holder deletes its copy.
    pub fn handovers(&self) -> String {
        format!("{}.control.handover", self.prefix)
    }

    /// Requests for the commits of a repository a node holds, to that node alone (the API's
    /// `log` forwards them here: a [`gitfleet_proto::LogRequest`] naming a task by id).
    pub fn node_log(&self, node: &str) -> String {
        format!("{}.control.log.{node}", self.prefix)
    }

    fn name(&self, suffix: &str) -> String {
        format!("{}_{suffix}", self.prefix.replace('.', "_")).to_ascii_uppercase()
    }

    /// The work-queue stream of jobs.
    pub fn jobs_stream(&self) -> String {
        self.name("jobs")
    }

    /// The key-value bucket of task state (key: task id).
    pub fn tasks_bucket(&self) -> String {
        self.name("tasks")
    }

    /// The key-value bucket of live nodes (key: node id; entries expire).
    pub fn nodes_bucket(&self) -> String {
        self.name("nodes")
    }

    /// The durable consumer a node pulls its jobs with.
    pub fn node_consumer(&self, node: &str) -> String {
        format!("node-{node}")
    }
}

/// Node ids become subject tokens and consumer names.
pub fn validate_node_id(id: &str) -> Result<(), String> {
    if id.is_empty()
        || id.len() > 64
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(format!(
            "invalid node id '{id}': use 1-64 letters, digits, '-' or '_'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_prefix() {
        let s = Subjects::new("gitfleet").expect("valid");
        assert_eq!(s.api("submit"), "gitfleet.api.submit");
        assert_eq!(s.api_operation("gitfleet.api.list"), Some("list"));
        assert_eq!(s.api_operation("other.api.list"), None);
        assert_eq!(s.jobs_stream(), "GITFLEET_JOBS");
        assert!(Subjects::new("a b").is_err());
        assert!(Subjects::new("a.>").is_err());
        assert!(validate_node_id("node-1").is_ok());
        assert!(validate_node_id("a.b").is_err());
    }
}
