//! Opening a storage root, and claiming it for work: the lock that makes one process work on a
//! root, and the staging directories an interrupted run left. The embedded mode, `serve` and a
//! node all claim their root this way.

use anyhow::{Context, bail};
use gitfleet_actors::RootLock;
use gitfleet_git::Layout;

/// The root at `root`, created if missing.
pub fn open_layout(root: &std::path::Path) -> anyhow::Result<Layout> {
    Layout::open(root).with_context(|| format!("cannot use {} as the storage root", root.display()))
}

/// `root` opened and locked for this process, with the staging directories of an interrupted
/// run removed (only the holder of the lock may: they could be another process's clones).
/// `busy` says what to do when another process holds it.
pub fn claim(root: &std::path::Path, busy: &str) -> anyhow::Result<(Layout, RootLock)> {
    let layout = open_layout(root)?;
    let Some(lock) = RootLock::try_acquire(&layout.state_dir())? else {
        bail!(
            "another gitfleet process is working in {}; {busy}",
            layout.root().display()
        );
    };
    let removed = layout
        .clean_staging()
        .context("cannot clean the staging directory")?;
    if removed > 0 {
        tracing::info!(removed, "removed staging directories of an interrupted run");
    }
    Ok((layout, lock))
}
