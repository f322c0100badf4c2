//! Threads for the git work: reused rather than created per operation, and a budget for gix's
//! pack indexing threads.
//!
//! A fleet runs thousands of short operations; a new thread for each (stack mapping, first-touch
//! page faults, unmapping) showed up in profiles of no-op syncs. Idle git threads wait
//! [`IDLE_TIMEOUT`] for the next operation, then exit. gix indexes a received pack on every core
//! by default; with several operations running that only adds threads that compete with each
//! other, so each gets its share of the cores ([`pack_threads`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock, mpsc};
use std::time::Duration;

type Job = Box<dyn FnOnce() + Send>;

/// How long an idle git thread waits for more work before it exits.
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Idle threads, each waiting on its channel.
static IDLE: Mutex<Vec<mpsc::Sender<Job>>> = Mutex::new(Vec::new());

/// Operations running in this process.
static RUNNING: AtomicUsize = AtomicUsize::new(0);

/// Runs `job` on an idle git thread, or on a new one.
pub(crate) fn spawn(job: Job) -> std::io::Result<()> {
    let mut job = job;
    loop {
        let idle = IDLE.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let Some(idle) = idle else { break };
        // A thread that timed out meanwhile hands the job back.
        match idle.send(job) {
            Ok(()) => return Ok(()),
            Err(mpsc::SendError(back)) => job = back,
        }
    }
    std::thread::Builder::new()
        .name("gitfleet-git".into())
        .spawn(move || {
            let mut job = job;
            loop {
                job();
                let (tx, rx) = mpsc::channel();
                IDLE.lock().unwrap_or_else(|e| e.into_inner()).push(tx);
                match rx.recv_timeout(IDLE_TIMEOUT) {
                    Ok(next) => job = next,
                    // Its sender stays in IDLE until someone tries it and gets the job back.
                    Err(_) => return,
                }
            }
        })
        .map(drop)
}

/// Counts an operation as running while it lives.
pub(crate) struct Running(());

impl Running {
    pub(crate) fn start() -> Running {
        RUNNING.fetch_add(1, Ordering::Relaxed);
        Running(())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        RUNNING.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Threads one operation may use to index a pack: its share of the cores, at least one.
pub(crate) fn pack_threads() -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    let cores = *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    (cores / RUNNING.load(Ordering::Relaxed).max(1)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_thread_takes_the_next_job() {
        let (tx, rx) = mpsc::channel();
        let mut threads = Vec::new();
        for i in 0..3 {
            let tx = tx.clone();
            spawn(Box::new(move || {
                tx.send((i, std::thread::current().id())).expect("send");
            }))
            .expect("spawn");
            let (n, thread) = rx
                .recv_timeout(Duration::from_secs(10))
                .expect("the job ran");
            assert_eq!(n, i);
            threads.push(thread);
            // One at a time: the next job finds this job's thread idle.
            while IDLE.lock().expect("idle").is_empty() {
                std::thread::yield_now();
            }
        }
        assert!(
            threads.iter().all(|t| *t == threads[0]),
            "one thread ran all three: {threads:?}"
        );
    }

    #[test]
    fn pack_threads_share_the_cores() {
        let alone = pack_threads();
        let crowd: Vec<Running> = (0..1024).map(|_| Running::start()).collect();
        assert_eq!(pack_threads(), 1, "many operations: one thread each");
        drop(crowd);
        assert!(pack_threads() >= 1 && alone >= 1);
    }
}
