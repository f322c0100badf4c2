//! gitfleet-actors' Fleet (Supervisor, CloneWorkers, Registry, FileStore) running real clones
//! against git daemon and smart-HTTP servers on 127.0.0.1.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use gitfleet_actors::{
    Executor, FileStore, Fleet, FleetConfig, GitExecutor, HostLimits, HostPaused, Job, RetryPolicy,
    Submitted, plan,
};
use gitfleet_git::{Control, CredentialsConfig, Layout, Limits, Policy, Progress};
use gitfleet_proto::{
    CloneTask, ErrorCode, Operation, Phase, StatusType, SyncResult, TaskError, TaskUpdate,
};
use gitfleet_tests::{
    Fixtures, GitDaemon, HttpOptions, HttpServer, Refusal, free_port, fsck, refs,
};
use tempfile::TempDir;

/// Upper bound for polls and waits; a healthy run needs a fraction of it.
const WAIT: Duration = Duration::from_secs(60);
const NODE: &str = "test-node";

/// A storage root of its own for one test.
struct Env {
    _dir: TempDir,
    layout: Layout,
}

impl Env {
    fn new() -> Env {
        gitfleet_git::init_tls();
        let dir = tempfile::tempdir().expect("creating a temporary directory");
        let layout = Layout::open(&dir.path().join("root")).expect("opening the storage root");
        Env { _dir: dir, layout }
    }

    fn executor(&self) -> GitExecutor {
        GitExecutor {
            layout: self.layout.clone(),
            policy: Policy::permissive(),
            credentials: CredentialsConfig::default(),
            limits: Limits {
                time_limit: Duration::from_secs(300),
                stall_limit: Duration::from_secs(60),
                grace: Duration::from_secs(2),
                ..Limits::default()
            },
        }
    }

    fn file_store(&self) -> FileStore {
        FileStore::open(&self.layout.state_dir()).expect("opening the file store")
    }

    async fn start(
        &self,
        executor: Arc<dyn Executor>,
        concurrency: usize,
        max_retries: u32,
    ) -> Fleet {
        self.start_with_hosts(executor, concurrency, max_retries, HostLimits::default())
            .await
    }

    async fn start_with_hosts(
        &self,
        executor: Arc<dyn Executor>,
        concurrency: usize,
        max_retries: u32,
        hosts: HostLimits,
    ) -> Fleet {
        let config = FleetConfig {
            layout: self.layout.clone(),
            concurrency,
            retry: RetryPolicy {
                max_retries,
                base_delay: Duration::from_millis(50),
                max_delay: Duration::from_millis(500),
                jitter: 0.1,
            },
            node: NODE.to_owned(),
            executor,
            schedule: Default::default(),
            hosts,
        };
        Fleet::start(config, Arc::new(self.file_store()))
            .await
            .expect("starting the fleet")
    }

    async fn start_git(&self, concurrency: usize, max_retries: u32) -> Fleet {
        self.start(Arc::new(self.executor()), concurrency, max_retries)
            .await
    }

    fn job(&self, url: &str) -> Job {
        plan(&self.layout, &Policy::permissive(), url, Operation::Mirror)
            .unwrap_or_else(|e| panic!("planning {url}: {e}"))
    }

    fn staging_is_empty(&self) -> bool {
        std::fs::read_dir(self.layout.state_dir().join("staging"))
            .expect("reading the staging directory")
            .next()
            .is_none()
    }
}

async fn wait_idle(fleet: &Fleet) {
    tokio::time::timeout(WAIT, fleet.wait_idle())
        .await
        .expect("the fleet becomes idle in time")
        .expect("the supervisor is alive");
}

/// Polls `check` until it returns true; panics naming `what` once `WAIT` has passed.
async fn poll_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {WAIT:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn task(fleet: &Fleet, id: &str) -> CloneTask {
    fleet
        .get(id)
        .await
        .expect("the registry is alive")
        .unwrap_or_else(|| panic!("task {id} is known"))
}

fn accepted(outcomes: &[Submitted]) -> Vec<String> {
    outcomes
        .iter()
        .map(|o| match o {
            Submitted::Accepted(id) => id.clone(),
            Submitted::Duplicate(id) => panic!("{id} was unexpectedly a duplicate"),
        })
        .collect()
}

fn assert_completed(task: &CloneTask) {
    assert_eq!(task.status.status_type, StatusType::Completed, "{task:#?}");
    assert_eq!(task.error_code, None, "{task:#?}");
    assert!(task.last_sync.is_some(), "{task:#?}");
    assert!(task.finished_at.is_some(), "{task:#?}");
}

fn assert_failed(task: &CloneTask, code: ErrorCode) {
    assert_eq!(task.status.status_type, StatusType::Failed, "{task:#?}");
    assert_eq!(task.error_code, Some(code), "{task:#?}");
    assert!(
        task.status.error.as_ref().is_some_and(|e| !e.is_empty()),
        "{task:#?}"
    );
    assert!(!Path::new(&task.path).exists(), "{task:#?}");
}

fn throttled(fx: &Fixtures, bytes_per_sec: u64) -> HttpServer {
    HttpServer::start(
        &fx.root,
        HttpOptions {
            throttle_bytes_per_sec: Some(bytes_per_sec),
            ..HttpOptions::default()
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_completes_good_urls_and_fails_bad_ones_with_their_codes() {
    let fx = Fixtures::new();
    let daemon = GitDaemon::start(&fx.root);
    let server = HttpServer::start(&fx.root, HttpOptions::default());
    let env = Env::new();
    let fleet = env.start_git(2, 1).await;

    let good = [
        (daemon.url("alpha.git"), "alpha.git"),
        (server.url("beta.git"), "beta.git"),
        (daemon.url("org-a/utils.git"), "org-a/utils.git"),
        (server.url("org-b/utils.git"), "org-b/utils.git"),
    ];
    let not_found = daemon.url("missing.git");
    let closed = format!("git://127.0.0.1:{}/closed.git", free_port());
    let mut jobs: Vec<Job> = good.iter().map(|(url, _)| env.job(url)).collect();
    jobs.push(env.job(&not_found));
    jobs.push(env.job(&closed));
    let ids = accepted(&fleet.submit(jobs.clone()).await.expect("submitting"));
    assert_eq!(ids.len(), 6);
    wait_idle(&fleet).await;

    for ((_, name), id) in good.iter().zip(&ids) {
        let task = task(&fleet, id).await;
        assert_completed(&task);
        assert_eq!(task.attempts, 1, "{task:#?}");
        assert_eq!(task.node.as_deref(), Some(NODE));
        assert_eq!(refs(Path::new(&task.path)), refs(&fx.repo(name)), "{name}");
        fsck(Path::new(&task.path)).expect("the mirror passes fsck");
    }
    let missing = task(&fleet, &ids[4]).await;
    assert_failed(&missing, ErrorCode::NotFound);
    assert_eq!(missing.attempts, 1, "permanent: not retried");
    let refused = task(&fleet, &ids[5]).await;
    assert_failed(&refused, ErrorCode::Network);
    assert_eq!(
        refused.attempts, 2,
        "transient: retried once (max_retries 1)"
    );

    // The registry has written every transition before answering this call.
    let listed = fleet.tasks().await.expect("listing tasks");
    assert_eq!(listed.len(), 6);
    let stored = env
        .file_store()
        .load_all_sync()
        .expect("loading the file store");
    assert_eq!(stored.len(), 6);
    for task in &stored {
        assert!(ids.contains(&task.id), "{task:#?}");
        assert!(task.status.status_type.is_final(), "{task:#?}");
        assert_eq!(task.status.progress, None, "{task:#?}");
        let live = listed
            .iter()
            .find(|t| t.id == task.id)
            .expect("every stored task is listed");
        assert_eq!(task, live, "the store holds the registry's state");

        // On the wire (the task's last line in the task log) progress is present and null.
        let log =
            std::fs::read(env.layout.state_dir().join("tasks.log")).expect("reading the task log");
        let json: serde_json::Value = log
            .split(|&b| b == b'\n')
            .filter_map(|line| serde_json::from_slice::<serde_json::Value>(line).ok())
            .rfind(|record| record["id"] == task.id.as_str())
            .expect("the task has a record in the log");
        assert!(
            json["status"]
                .as_object()
                .is_some_and(|s| s.get("progress") == Some(&serde_json::Value::Null)),
            "{json:#}"
        );
    }
    assert!(env.staging_is_empty());
    fleet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_server_errors_are_retried_until_max_retries() {
    let fx = Fixtures::new();

    // Two 503s, three attempts allowed: the third succeeds.
    let server = HttpServer::start(
        &fx.root,
        HttpOptions {
            fail_first: 2,
            ..HttpOptions::default()
        },
    );
    let env = Env::new();
    let fleet = env.start_git(1, 3).await;
    let ids = accepted(
        &fleet
            .submit(vec![env.job(&server.url("alpha.git"))])
            .await
            .expect("submitting"),
    );
    wait_idle(&fleet).await;
    let done = task(&fleet, &ids[0]).await;
    assert_completed(&done);
    assert_eq!(done.attempts, 3, "{done:#?}");
    assert_eq!(refs(Path::new(&done.path)), refs(&fx.repo("alpha.git")));
    let statuses: Vec<u16> = server.request_log().iter().map(|r| r.status).collect();
    assert_eq!(statuses[..2], [503, 503], "{statuses:?}");
    fleet.shutdown().await;

    // Two 503s, only one retry allowed: the task fails with the server's error.
    let server = HttpServer::start(
        &fx.root,
        HttpOptions {
            fail_first: 2,
            ..HttpOptions::default()
        },
    );
    let env = Env::new();
    let fleet = env.start_git(1, 1).await;
    let ids = accepted(
        &fleet
            .submit(vec![env.job(&server.url("alpha.git"))])
            .await
            .expect("submitting"),
    );
    wait_idle(&fleet).await;
    let failed = task(&fleet, &ids[0]).await;
    assert_failed(&failed, ErrorCode::ServerError);
    assert_eq!(failed.attempts, 2, "{failed:#?}");
    assert_eq!(server.requests(), 2, "{:#?}", server.request_log());
    fleet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_asks_to_slow_down_is_paused_as_long_as_it_asks_using_no_retry() {
    let fx = Fixtures::new();
    // The first two requests (both tasks' first) get 429 with Retry-After: 2.
    let server = HttpServer::start(
        &fx.root,
        HttpOptions {
            refuse_first: Some(Refusal {
                count: 2,
                status: 429,
                headers: vec![("Retry-After".into(), "2".into())],
                body: "slow down\n".into(),
            }),
            ..HttpOptions::default()
        },
    );
    let env = Env::new();
    // No retries at all: a pause must not use one up.
    let fleet = env.start_git(2, 0).await;
    let mut pauses = fleet.host_pauses();
    let ids = accepted(
        &fleet
            .submit(vec![
                env.job(&server.url("alpha.git")),
                env.job(&server.url("beta.git")),
            ])
            .await
            .expect("submitting"),
    );
    wait_idle(&fleet).await;
    for (id, name) in ids.iter().zip(["alpha.git", "beta.git"]) {
        let done = task(&fleet, id).await;
        assert_completed(&done);
        assert_eq!(refs(Path::new(&done.path)), refs(&fx.repo(name)));
    }
    let log = server.request_log();
    let first_refusal = log.iter().find(|r| r.status == 429).expect("a 429");
    let first_answer = log.iter().find(|r| r.status != 429).expect("an answer");
    assert!(
        first_answer.received >= first_refusal.received + Duration::from_secs(2),
        "the host was asked for 2 s of quiet: {log:#?}"
    );
    assert_eq!(
        pauses.try_recv().expect("the pause is announced"),
        HostPaused {
            host: "127.0.0.1".into(),
            pause: Duration::from_secs(2)
        }
    );
    fleet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_gets_no_more_transfers_at_once_than_its_limit_and_every_task_completes() {
    let fx = Fixtures::new();
    let names: Vec<String> = (0..6).map(|n| format!("copies/a{n}.git")).collect();
    for name in &names {
        let to = fx.root.join(name);
        std::fs::create_dir_all(to.parent().expect("a parent")).expect("mkdir");
        let copied = std::process::Command::new("cp")
            .arg("-a")
            .arg(fx.repo("alpha.git"))
            .arg(&to)
            .status()
            .expect("cp");
        assert!(copied.success());
    }
    // Slow enough that six workers without a limit would overlap on the host.
    let server = HttpServer::start(
        &fx.root,
        HttpOptions {
            throttle_bytes_per_sec: Some(64 * 1024),
            ..HttpOptions::default()
        },
    );
    let env = Env::new();
    let hosts = HostLimits::from_rules(["127.0.0.1=2"]).expect("a rule");
    let executor = Arc::new(Counting {
        inner: env.executor(),
        running: AtomicUsize::new(0),
        most: AtomicUsize::new(0),
    });
    let fleet = env.start_with_hosts(executor.clone(), 6, 0, hosts).await;
    let jobs = names.iter().map(|n| env.job(&server.url(n))).collect();
    let ids = accepted(&fleet.submit(jobs).await.expect("submitting"));
    wait_idle(&fleet).await;
    for id in &ids {
        assert_completed(&task(&fleet, id).await);
    }
    // As the workers ran them, and as the server saw them.
    assert_eq!(executor.most.load(Ordering::SeqCst), 2);
    assert_eq!(
        server.max_concurrent_requests(),
        2,
        "{:#?}",
        server.request_log()
    );
    fleet.shutdown().await;
}

/// Counts the transfers running at once.
struct Counting {
    inner: GitExecutor,
    running: AtomicUsize,
    most: AtomicUsize,
}

impl Executor for Counting {
    fn execute(
        &self,
        job: &Job,
        control: &Control,
        on_progress: &mut dyn FnMut(&Progress),
    ) -> Result<SyncResult, TaskError> {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        let result = self.inner.execute(job, control, on_progress);
        self.running.fetch_sub(1, Ordering::SeqCst);
        result
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queued_jobs_of_a_paused_host_can_be_handed_back() {
    let fx = Fixtures::new();
    let server = HttpServer::start(&fx.root, HttpOptions::default());
    let env = Env::new();
    let fleet = env.start_git(2, 0).await;
    fleet
        .pause_host("127.0.0.1", Duration::from_secs(600))
        .expect("the supervisor is alive");
    assert!(
        fleet
            .host_paused_for("127.0.0.1")
            .await
            .expect("alive")
            .is_some_and(|left| left > Duration::from_secs(590))
    );
    let ids = accepted(
        &fleet
            .submit(vec![
                env.job(&server.url("alpha.git")),
                env.job(&server.url("beta.git")),
            ])
            .await
            .expect("submitting"),
    );
    let mut withdrawn = fleet.withdraw_queued("127.0.0.1").await.expect("alive");
    withdrawn.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(withdrawn, expected);
    // Nothing is left to wait for, nothing ran, and the same jobs may come back later.
    wait_idle(&fleet).await;
    assert_eq!(server.requests(), 0);
    let again = fleet
        .submit(vec![env.job(&server.url("alpha.git"))])
        .await
        .expect("submitting");
    assert!(matches!(again[0], Submitted::Accepted(_)), "{again:?}");
    fleet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_errors_are_not_retried() {
    let fx = Fixtures::new();
    let server = HttpServer::start(&fx.root, HttpOptions::default());
    let daemon = GitDaemon::start(&fx.root);
    let env = Env::new();
    let fleet = env.start_git(2, 3).await;
    let ids = accepted(
        &fleet
            .submit(vec![
                env.job(&server.url("missing.git")),
                env.job(&daemon.url("missing.git")),
            ])
            .await
            .expect("submitting"),
    );
    wait_idle(&fleet).await;
    for id in &ids {
        let task = task(&fleet, id).await;
        assert_failed(&task, ErrorCode::NotFound);
        assert_eq!(task.attempts, 1, "{task:#?}");
    }
    let log = server.request_log();
    assert!(
        !log.is_empty() && log.iter().all(|r| r.status == 404),
        "{log:#?}"
    );
    assert!(
        log.iter().filter(|r| r.method == "GET").count() == 1,
        "one attempt only: {log:#?}"
    );
    fleet.shutdown().await;
}

/// Panics on its first call for one URL, then behaves like the real executor.
struct PanicOnce {
    inner: GitExecutor,
    target: String,
    calls: AtomicUsize,
    target_calls: AtomicUsize,
}

impl Executor for PanicOnce {
    fn execute(
        &self,
        job: &Job,
        control: &Control,
        on_progress: &mut dyn FnMut(&Progress),
    ) -> Result<SyncResult, TaskError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if job.display == self.target && self.target_calls.fetch_add(1, Ordering::SeqCst) == 0 {
            panic!("injected panic for {}", job.display);
        }
        self.inner.execute(job, control, on_progress)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_worker_is_replaced_and_its_task_retried() {
    let fx = Fixtures::new();
    let daemon = GitDaemon::start(&fx.root);
    let env = Env::new();
    let target = daemon.url("alpha.git");
    let executor = Arc::new(PanicOnce {
        inner: env.executor(),
        target: target.clone(),
        calls: AtomicUsize::new(0),
        target_calls: AtomicUsize::new(0),
    });
    // One worker: whatever runs after the panic runs on its replacement.
    let fleet = env.start(executor.clone(), 1, 3).await;
    let ids = accepted(
        &fleet
            .submit(vec![
                env.job(&target),
                env.job(&daemon.url("beta.git")),
                env.job(&daemon.url("org-a/utils.git")),
            ])
            .await
            .expect("submitting"),
    );
    wait_idle(&fleet).await;
    assert_eq!(executor.target_calls.load(Ordering::SeqCst), 2);
    let panicked = task(&fleet, &ids[0]).await;
    assert_completed(&panicked);
    assert_eq!(panicked.attempts, 2, "{panicked:#?}");
    assert_eq!(refs(Path::new(&panicked.path)), refs(&fx.repo("alpha.git")));
    for id in &ids[1..] {
        let task = task(&fleet, id).await;
        assert_completed(&task);
        assert_eq!(task.attempts, 1, "{task:#?}");
    }

    // The pool still works for new requests.
    let later = accepted(
        &fleet
            .submit(vec![env.job(&daemon.url("org-b/utils.git"))])
            .await
            .expect("submitting again"),
    );
    wait_idle(&fleet).await;
    let task = task(&fleet, &later[0]).await;
    assert_completed(&task);
    assert_eq!(
        refs(Path::new(&task.path)),
        refs(&fx.repo("org-b/utils.git"))
    );
    assert_eq!(executor.calls.load(Ordering::SeqCst), 5);
    fleet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_submissions_join_the_pending_task() {
    let fx = Fixtures::new();
    let server = throttled(&fx, 256 * 1024);
    let env = Env::new();
    let fleet = env.start_git(2, 0).await;
    let job = env.job(&server.url("big.git"));
    let id = job.task_id.clone();

    let outcomes = fleet
        .submit(vec![job.clone(), job.clone()])
        .await
        .expect("submitting");
    assert_eq!(
        outcomes,
        [
            Submitted::Accepted(id.clone()),
            Submitted::Duplicate(id.clone())
        ]
    );
    poll_until("the task is cloning", || async {
        task(&fleet, &id).await.status.status_type == StatusType::Cloning
    })
    .await;
    let again = fleet.submit(vec![job]).await.expect("submitting again");
    assert_eq!(again, [Submitted::Duplicate(id.clone())]);
    let running = task(&fleet, &id).await;
    assert_eq!(running.status.status_type, StatusType::Cloning);
    assert_eq!(running.attempts, 1, "joining did not start another attempt");

    assert!(fleet.cancel(&id).await.expect("cancelling"));
    wait_idle(&fleet).await;
    assert_failed(&task(&fleet, &id).await, ErrorCode::Cancelled);
    fleet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_running_clone() {
    let fx = Fixtures::new();
    let server = throttled(&fx, 256 * 1024);
    let env = Env::new();
    let fleet = env.start_git(1, 3).await;
    let ids = accepted(
        &fleet
            .submit(vec![env.job(&server.url("big.git"))])
            .await
            .expect("submitting"),
    );
    let id = &ids[0];
    poll_until("the clone is receiving", || async {
        let task = task(&fleet, id).await;
        task.status.status_type == StatusType::Cloning
            && task.phase.is_some_and(|p| p >= Phase::Receiving)
    })
    .await;
    assert!(fleet.cancel(id).await.expect("cancelling"));
    wait_idle(&fleet).await;

    let cancelled = task(&fleet, id).await;
    assert_failed(&cancelled, ErrorCode::Cancelled);
    assert_eq!(cancelled.attempts, 1, "a cancelled task is not retried");
    assert!(server.body_bytes_sent() < 4 * 1024 * 1024, "stopped early");
    assert!(
        !fleet.cancel(id).await.expect("cancelling again"),
        "nothing left to cancel"
    );
    assert!(
        !fleet
            .cancel("0123456789abcdef")
            .await
            .expect("cancelling an unknown task")
    );
    let stored = env
        .file_store()
        .get(id)
        .expect("reading the store")
        .expect("the task is stored");
    assert_eq!(stored.error_code, Some(ErrorCode::Cancelled));
    poll_until("the staging directory is empty", || async {
        env.staging_is_empty()
    })
    .await;
    assert!(!Path::new(&cancelled.path).exists());
    fleet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_show_the_lifecycle_and_monotonic_progress() {
    let fx = Fixtures::new();
    let server = throttled(&fx, 2 * 1024 * 1024);
    let env = Env::new();
    let fleet = env.start_git(1, 0).await;
    let mut updates = fleet.subscribe();
    let ids = accepted(
        &fleet
            .submit(vec![env.job(&server.url("big.git"))])
            .await
            .expect("submitting"),
    );
    let id = ids[0].clone();

    let mut states: Vec<StatusType> = Vec::new();
    let mut progress: Vec<(Phase, u8, u32)> = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let update = tokio::time::timeout_at(deadline, updates.recv())
            .await
            .expect("the task finishes in time")
            .expect("no updates are lost");
        match update {
            TaskUpdate::State { task } if task.id == id => {
                if states.last() != Some(&task.status.status_type) {
                    states.push(task.status.status_type);
                }
                if task.status.status_type.is_final() {
                    break;
                }
            }
            TaskUpdate::Progress(event) if event.task_id == id => {
                progress.push((event.phase, event.progress, event.attempt));
            }
            _ => {}
        }
    }
    assert_eq!(
        states,
        [
            StatusType::Queued,
            StatusType::Cloning,
            StatusType::Completed
        ]
    );
    assert!(!progress.is_empty(), "progress events were sent");
    for pair in progress.windows(2) {
        assert!(pair[0].1 <= pair[1].1, "progress fell: {pair:?}");
        assert!(pair[0].0 <= pair[1].0, "phase went back: {pair:?}");
    }
    assert!(
        progress.iter().all(|p| p.2 == 1 && p.1 <= 100),
        "{progress:?}"
    );
    assert!(
        progress.iter().any(|p| p.0 == Phase::Receiving),
        "{progress:?}"
    );
    let done = task(&fleet, &id).await;
    assert_completed(&done);
    assert_eq!(done.status.progress, None);
    assert!(
        done.last_sync
            .as_ref()
            .is_some_and(|r| r.bytes_received >= 4 * 1024 * 1024),
        "{done:#?}"
    );
    fleet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_continues_the_schedule_history_of_its_task() {
    let fx = Fixtures::new();
    let daemon = GitDaemon::start(&fx.root);
    let env = Env::new();
    let fleet = env.start_git(1, 0).await;
    // A node that just started knows nothing of the task: the job brings its stored record,
    // four permanent failures in a row already.
    let mut job = env.job(&daemon.url("missing.git"));
    let mut stored = gitfleet_proto::CloneTask::new(
        job.task_id.clone(),
        job.display.clone(),
        Operation::Mirror,
        job.dest.to_string_lossy().into_owned(),
        jiff::Timestamp::now(),
    );
    stored.consecutive_failures = 4;
    stored.interval_s = 600;
    job.history = Some(Box::new(stored));
    let id = job.task_id.clone();
    fleet.submit(vec![job]).await.expect("submit");
    wait_idle(&fleet).await;
    let task = fleet.get(&id).await.expect("get").expect("known");
    assert_eq!(task.consecutive_failures, 5, "{task:?}");
    assert!(
        task.quarantined,
        "the fifth failure in a row quarantines: {task:?}"
    );
    fleet.shutdown().await;
}
