//! How much room a repository takes on disk.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Bytes allocated to `path` and everything below it, counted as `du` does: allocated blocks,
/// symbolic links not followed (their own size counts), a file with several hard links once.
/// Entries that vanish during the walk (a concurrent `git gc`) are skipped.
pub fn disk_usage(path: &Path) -> std::io::Result<u64> {
    let mut total = 0u64;
    let mut linked = HashSet::new();
    let mut pending = vec![path.to_path_buf()];
    let mut top = true;
    while let Some(path) = pending.pop() {
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !top => continue,
            Err(e) => return Err(e),
        };
        top = false;
        if !meta.is_dir() && meta.nlink() > 1 && !linked.insert((meta.dev(), meta.ino())) {
            continue;
        }
        total = total.saturating_add(meta.blocks().saturating_mul(512));
        if meta.is_dir() {
            let entries = match std::fs::read_dir(&path) {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            for entry in entries {
                pending.push(entry?.path());
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_blocks_below_a_directory_without_following_links() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = dir.path().join("repo");
        std::fs::create_dir_all(repo.join("objects/pack")).expect("mkdir");
        std::fs::write(repo.join("objects/pack/p.pack"), vec![7u8; 100_000]).expect("write");
        std::fs::hard_link(
            repo.join("objects/pack/p.pack"),
            repo.join("objects/pack/again.pack"),
        )
        .expect("link");
        // Outside the repository, big, and only reachable through a symbolic link.
        std::fs::write(dir.path().join("outside"), vec![1u8; 1_000_000]).expect("write");
        std::os::unix::fs::symlink(dir.path().join("outside"), repo.join("link")).expect("link");

        let used = disk_usage(&repo).expect("measured");
        assert!(used >= 100_000, "{used}");
        assert!(
            used < 200_000,
            "counted a hard link twice or followed the link: {used}"
        );
        assert!(disk_usage(&dir.path().join("absent")).is_err());
    }
}
