//! `gitfleet cache`: the command line of gitfleet-cache. Blocking work (it runs on a blocking
//! thread): the cache clones and copies synchronously.

use std::collections::BTreeSet;
use std::process::ExitCode;

use anyhow::bail;
use gitfleet_cache::{Cache, CacheConfig, CacheError, CacheStatus, CachedEntry};
use gitfleet_git::{LocalPaths, RepoUrl};

use crate::cli::{CacheArgs, CacheCommand};
use crate::report::human_bytes;

pub fn run(args: CacheArgs) -> anyhow::Result<ExitCode> {
    if !(args.max_size_gb.is_finite() && args.max_size_gb > 0.0) {
        bail!("--max-size-gb must be a positive number of GB");
    }
    let mut config = CacheConfig::new(&args.dir);
    config.timeout = args.stale_after;
    config.max_bytes = (args.max_size_gb * 1024.0 * 1024.0 * 1024.0) as u64;
    let cache = Cache::open(config)?;
    match args.command {
        CacheCommand::Add {
            sources,
            name,
            json,
        } => {
            if name.is_some() && sources.len() > 1 {
                bail!("--name names one entry: give one source with it");
            }
            cache.set_credentials(crate::credentials::load(
                &args.auth,
                Some(&hosts_of(sources.iter())),
            )?);
            let results = sources
                .iter()
                .map(|source| cache.add(source, name.as_deref()))
                .collect();
            Ok(report(results, json))
        }
        CacheCommand::Refresh { names, json } => {
            let entries = cache.list()?;
            let names: Vec<String> = if names.is_empty() {
                entries
                    .iter()
                    .filter(|e| e.status != CacheStatus::Fresh)
                    .map(|e| e.entry.name.clone())
                    .collect()
            } else {
                names
            };
            cache.set_credentials(crate::credentials::load(
                &args.auth,
                Some(&hosts_of(entries.iter().map(|e| &e.entry.source))),
            )?);
            let results = names.iter().map(|name| cache.refresh(name)).collect();
            Ok(report(results, json))
        }
        CacheCommand::Ls { json } => {
            let entries = cache.list()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&entries)?);
            } else {
                print_table(&entries);
            }
            Ok(ExitCode::SUCCESS)
        }
        CacheCommand::Rm { names } => {
            let mut code = ExitCode::SUCCESS;
            for name in &names {
                if let Err(e) = cache.remove(name) {
                    eprintln!("gitfleet: {e}");
                    code = ExitCode::from(1);
                }
            }
            Ok(code)
        }
        CacheCommand::Stats { json } => {
            let stats = cache.stats()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&stats)?);
            } else {
                println!(
                    "{} entries, {} of {} ({:.2} GB)",
                    stats.total_entries,
                    human_bytes(stats.total_size_bytes),
                    human_bytes(stats.max_size_bytes),
                    stats.total_size_gb
                );
                let counts = |m: &std::collections::BTreeMap<&str, usize>| {
                    m.iter()
                        .map(|(k, v)| format!("{k} {v}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                println!("by status: {}", counts(&stats.by_status));
                println!("by type: {}", counts(&stats.by_type));
            }
            Ok(ExitCode::SUCCESS)
        }
        CacheCommand::Path { name } => {
            println!("{}", cache.path(&name)?.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The hosts of the URL sources, which `GITFLEET_TOKEN` goes to without `--token-host`.
fn hosts_of<'a>(sources: impl Iterator<Item = &'a String>) -> Vec<String> {
    sources
        .filter_map(|s| RepoUrl::parse_with(s, LocalPaths::AsStored).ok())
        .filter_map(|u| u.credential_host().map(str::to_string))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// Prints what was cached (a table, or JSON) and every failure on stderr; exit 1 if any failed.
fn report(results: Vec<Result<CachedEntry, CacheError>>, json: bool) -> ExitCode {
    let mut done = Vec::new();
    let mut failed = 0;
    for result in results {
        match result {
            Ok(entry) => done.push(entry),
            Err(e) => {
                eprintln!("gitfleet: [{}] {e}", e.code());
                failed += 1;
            }
        }
    }
    if json {
        match serde_json::to_string_pretty(&done) {
            Ok(text) => println!("{text}"),
            Err(e) => eprintln!("gitfleet: {e}"),
        }
    } else {
        print_table(&done);
    }
    if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn print_table(entries: &[CachedEntry]) {
    if entries.is_empty() {
        return;
    }
    let width = entries
        .iter()
        .map(|e| e.entry.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    println!(
        "{:<width$}  {:<5}  {:<7}  {:>9}  {:<20}  SOURCE",
        "NAME", "TYPE", "STATUS", "SIZE", "UPDATED"
    );
    for e in entries {
        let updated = e.entry.last_updated.map_or_else(
            || "-".to_string(),
            |t| t.strftime("%Y-%m-%d %H:%M:%S").to_string(),
        );
        println!(
            "{:<width$}  {:<5}  {:<7}  {:>9}  {:<20}  {}",
            e.entry.name,
            e.entry.cache_type.as_str(),
            e.status.as_str(),
            human_bytes(e.entry.size_bytes),
            updated,
            e.entry.source
        );
        if let Some(error) = &e.entry.error {
            println!("{:width$}  error: {error}", "");
        }
    }
}
