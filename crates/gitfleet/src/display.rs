//! Showing task updates: progress bars on a terminal, JSON lines with `--json`, plain lines
//! otherwise.

use std::collections::{HashMap, HashSet};
use std::io::{IsTerminal, Write};
use std::time::Duration;

use gitfleet_proto::{CloneTask, StatusType, TaskError, TaskUpdate};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

pub enum Mode {
    Bars,
    Json,
    Lines,
}

pub struct Display {
    mode: Mode,
    multi: MultiProgress,
    overall: ProgressBar,
    bars: HashMap<String, ProgressBar>,
    /// The tasks of this run; updates of other tasks are ignored.
    ours: HashSet<String>,
    finished: HashSet<String>,
}

impl Display {
    pub fn new(json: bool) -> Display {
        let mode = if json {
            Mode::Json
        } else if std::io::stderr().is_terminal() {
            Mode::Bars
        } else {
            Mode::Lines
        };
        let multi = match mode {
            Mode::Bars => MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(8)),
            _ => MultiProgress::with_draw_target(ProgressDrawTarget::hidden()),
        };
        let overall = multi.add(ProgressBar::new(0));
        overall.set_style(
            ProgressStyle::with_template(
                "{spinner} {elapsed_precise} [{bar:30}] {pos}/{len} repositories {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        overall.enable_steady_tick(Duration::from_millis(250));
        Display {
            mode,
            multi,
            overall,
            bars: HashMap::new(),
            ours: HashSet::new(),
            finished: HashSet::new(),
        }
    }

    pub fn track(&mut self, ids: impl IntoIterator<Item = String>) {
        for id in ids {
            if self.ours.insert(id) {
                self.overall.inc_length(1);
            }
        }
    }

    /// A URL that never became a task (unparseable, refused by policy).
    pub fn rejected(&mut self, input: &str, error: &TaskError) {
        // The input as typed may hold a password or a token.
        let input = gitfleet_git::scrub_userinfo(input);
        match self.mode {
            Mode::Json => {
                let line = serde_json::json!({"kind": "rejected", "input": input, "error": error});
                println!("{line}");
            }
            _ => self.say(format!("rejected  {}", error.message)),
        }
    }

    pub fn update(&mut self, update: &TaskUpdate) {
        let id = match update {
            TaskUpdate::State { task } => &task.id,
            TaskUpdate::Progress(p) => &p.task_id,
        };
        if !self.ours.contains(id) {
            return;
        }
        if let Mode::Json = self.mode {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(&gitfleet_proto::to_json(update));
            let _ = out.write_all(b"\n");
        }
        match update {
            TaskUpdate::Progress(p) => {
                if let Some(bar) = self.bars.get(&p.task_id) {
                    bar.set_position(u64::from(p.progress));
                    bar.set_message(format!("{} {}", p.phase, human_rate(p.bytes_per_sec)));
                }
            }
            TaskUpdate::State { task } => self.state(task),
        }
    }

    fn state(&mut self, task: &CloneTask) {
        match task.status.status_type {
            StatusType::Cloning => {
                if !self.bars.contains_key(&task.id) {
                    let bar = self
                        .multi
                        .insert_before(&self.overall, ProgressBar::new(100));
                    bar.set_style(
                        ProgressStyle::with_template("  {prefix:40!} [{bar:25}] {pos:>3}% {msg}")
                            .unwrap_or_else(|_| ProgressStyle::default_bar())
                            .progress_chars("=> "),
                    );
                    bar.set_prefix(task.url.clone());
                    self.bars.insert(task.id.clone(), bar);
                }
            }
            StatusType::Completed | StatusType::Failed => {
                if let Some(bar) = self.bars.remove(&task.id) {
                    bar.finish_and_clear();
                    self.multi.remove(&bar);
                }
                if self.finished.insert(task.id.clone()) {
                    self.overall.inc(1);
                }
                if !matches!(self.mode, Mode::Json) {
                    let line = match &task.status.error {
                        Some(error) => format!("failed    {}: {error}", task.url),
                        None => format!("completed {} -> {}", task.url, task.path),
                    };
                    self.say(line);
                }
            }
            StatusType::Queued => {
                // Back to queued after a transient failure: a retry is coming.
                if let Some(bar) = self.bars.remove(&task.id) {
                    bar.finish_and_clear();
                    self.multi.remove(&bar);
                }
            }
        }
    }

    fn say(&self, line: String) {
        match self.mode {
            Mode::Bars => {
                let _ = self.multi.println(line);
            }
            _ => println!("{line}"),
        }
    }

    pub fn finish(&self) {
        self.overall.finish_and_clear();
    }
}

fn human_rate(bytes_per_sec: u64) -> String {
    if bytes_per_sec == 0 {
        return String::new();
    }
    format!("{}/s", indicatif::HumanBytes(bytes_per_sec))
}
