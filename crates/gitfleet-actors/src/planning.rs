//! Turning a [`WorkRequest`] into jobs on a root: the same for a one-shot run and for a running
//! `serve` asked over its socket.

use std::collections::HashMap;

use crate::{Job, plan_from_task};
use gitfleet_git::{Layout, Policy, Target, scrub_userinfo};
use gitfleet_proto::{CloneTask, ErrorCode, Operation, TaskError, WorkRequest};

/// The jobs of a request, and the inputs refused.
#[derive(Debug, Default)]
pub struct Planned {
    pub jobs: Vec<Job>,
    pub rejected: Vec<(String, TaskError)>,
    /// A sync of everything found nothing to do.
    pub nothing_to_sync: bool,
}

/// Plans `work` against the tasks the root `known`s, under `policy`.
pub fn plan_work(
    layout: &Layout,
    policy: &Policy,
    known: &[CloneTask],
    work: &WorkRequest,
) -> Planned {
    let mut planned = Planned::default();
    let known_by_id: HashMap<&str, &CloneTask> = known.iter().map(|t| (t.id.as_str(), t)).collect();
    // A new request for a stored task must name the same source (a task's URL never changes
    // silently).
    let new_job = |target: Result<Target, TaskError>, operation: Operation| {
        let target = target?;
        if let Some(stored) = known_by_id.get(target.id()) {
            target.check_stored(stored)?;
            crate::refuse_archived(stored)?;
        }
        Ok::<Job, TaskError>(Job::new(layout, &target, operation))
    };
    let mut take = |input: &str, job: Result<Job, TaskError>| match job {
        Ok(job) => planned.jobs.push(job),
        Err(e) => planned.rejected.push((input.to_string(), e)),
    };
    match work {
        WorkRequest::Clone { inputs, operation } => {
            for input in inputs {
                take(
                    input,
                    new_job(Target::for_url(input, *operation, policy), *operation),
                );
            }
        }
        WorkRequest::Init { names, worktree } => {
            for name in names {
                take(
                    name,
                    new_job(Target::for_init(name, *worktree), Operation::Init),
                );
            }
        }
        WorkRequest::Sync { inputs } if inputs.is_empty() => {
            // Archived repositories are not "everything": they are skipped, not refused.
            for task in known
                .iter()
                .filter(|t| t.status.status_type.is_final() && !t.archived)
            {
                take(&task.url, plan_from_task(layout, policy, task));
            }
            planned.nothing_to_sync =
                planned.jobs.is_empty() && known.iter().all(|t| t.status.status_type.is_final());
        }
        WorkRequest::Sync { inputs } => {
            for input in inputs {
                let job = find_task(layout, policy, known, input)
                    .and_then(|task| plan_from_task(layout, policy, task));
                take(input, job);
            }
        }
    }
    planned
}

/// The stored task for a URL or a task id.
pub fn find_task<'a>(
    layout: &Layout,
    policy: &Policy,
    known: &'a [CloneTask],
    input: &str,
) -> Result<&'a CloneTask, TaskError> {
    let candidates = Target::lookup_ids(input, policy);
    known
        .iter()
        .find(|t| candidates.contains(&t.id))
        .ok_or_else(|| {
            TaskError::new(
                ErrorCode::NotFound,
                format!(
                    "{} is not a known repository in {}",
                    scrub_userinfo(input),
                    layout.root().display()
                ),
            )
        })
}
