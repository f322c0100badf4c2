//! What a run is asked to work on, read the same way in the embedded and the cluster mode (and
//! for a running `serve`): the work a command names, and URL lists.

use std::io::BufRead;

use anyhow::{Context, bail};
use gitfleet_proto::{Operation, WorkRequest};

use crate::cli::{Command, RunArgs, Sources};

/// The work `command` names, with its URL lists read, and how to run it; `None` for the
/// other commands.
pub fn work_of(command: Command) -> anyhow::Result<Option<(WorkRequest, RunArgs)>> {
    let clone = |sources: &Sources, operation: Operation| -> anyhow::Result<WorkRequest> {
        let inputs = read_sources(sources)?;
        if inputs.is_empty() {
            bail!("no repositories given: name URLs or use --file LIST");
        }
        Ok(WorkRequest::Clone { inputs, operation })
    };
    Ok(Some(match command {
        Command::Mirror { sources, bare, run } => {
            let op = if bare {
                Operation::Bare
            } else {
                Operation::Mirror
            };
            (clone(&sources, op)?, run)
        }
        Command::Clone { sources, run } => (clone(&sources, Operation::Checkout)?, run),
        Command::Init {
            names,
            worktree,
            run,
        } => (WorkRequest::Init { names, worktree }, run),
        Command::Sync { sources, run } => (
            WorkRequest::Sync {
                inputs: read_sources(&sources)?,
            },
            run,
        ),
        _ => return Ok(None),
    }))
}

/// The URLs given on the command line, then those of the `--file` list.
pub fn read_sources(sources: &Sources) -> anyhow::Result<Vec<String>> {
    let mut urls = sources.urls.clone();
    if let Some(path) = &sources.file {
        let reader: Box<dyn BufRead> = if path.as_os_str() == "-" {
            Box::new(std::io::stdin().lock())
        } else {
            Box::new(std::io::BufReader::new(
                std::fs::File::open(path)
                    .with_context(|| format!("cannot read url list {}", path.display()))?,
            ))
        };
        for line in reader.lines() {
            let line = line.with_context(|| format!("cannot read url list {}", path.display()))?;
            let line = strip_comment(&line).trim();
            if !line.is_empty() {
                urls.push(line.to_string());
            }
        }
    }
    Ok(urls)
}

/// A URL list line without its comment: `#` at the start of the line or after white space (a `#`
/// inside a URL, as in a password, is part of it).
fn strip_comment(line: &str) -> &str {
    let mut previous = ' ';
    for (i, c) in line.char_indices() {
        if c == '#' && previous.is_whitespace() {
            return &line[..i];
        }
        previous = c;
    }
    line
}
