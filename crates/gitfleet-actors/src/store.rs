//! Durable task state. The embedded store keeps one JSON file per task under
//! `<root>/.gitfleet/tasks/`, replaced atomically (write to a temporary file, fsync, rename), so a
//! reader in another process never sees a half-written record and a crash loses at most the
//! transition being written.

use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use gitfleet_proto::CloneTask;

pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = std::io::Result<T>> + Send + 'a>>;

/// Where task state survives the process. The cluster puts a JetStream key-value bucket here.
pub trait TaskStore: Send + Sync + 'static {
    /// The tasks the Registry starts with (and resumes from).
    fn load_all(&self) -> StoreFuture<'_, Vec<CloneTask>>;
    /// Stores `task`, unless the store holds a newer attempt of it (a late result of an attempt
    /// that was superseded must not overwrite newer state).
    fn put<'a>(&'a self, task: &'a CloneTask) -> StoreFuture<'a, ()>;
}

#[derive(Debug, Clone)]
pub struct FileStore {
    dir: PathBuf,
}

impl FileStore {
    pub fn open(state_dir: &Path) -> std::io::Result<FileStore> {
        let dir = state_dir.join("tasks");
        std::fs::create_dir_all(&dir)?;
        Ok(FileStore { dir })
    }

    fn path_of(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    pub fn get(&self, id: &str) -> std::io::Result<Option<CloneTask>> {
        match std::fs::read(self.path_of(id)) {
            Ok(bytes) => Ok(gitfleet_proto::from_json(&bytes).ok()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl TaskStore for FileStore {
    fn load_all(&self) -> StoreFuture<'_, Vec<CloneTask>> {
        Box::pin(std::future::ready(self.load_all_sync()))
    }

    fn put<'a>(&'a self, task: &'a CloneTask) -> StoreFuture<'a, ()> {
        // One process per root (the root lock): no other writer to fence against.
        Box::pin(std::future::ready(self.put_sync(task)))
    }
}

impl FileStore {
    /// Every readable record, oldest first.
    pub fn load_all_sync(&self) -> std::io::Result<Vec<CloneTask>> {
        let mut tasks = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let bytes = match std::fs::read(&path) {
                Ok(b) => b,
                // Replaced or removed between listing and reading.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            match gitfleet_proto::from_json::<CloneTask>(&bytes) {
                Ok(task) => tasks.push(task),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "skipping unreadable task record")
                }
            }
        }
        tasks.sort_by(|a, b| {
            a.created_at
                .cmp(&b.created_at)
                .then_with(|| a.id.cmp(&b.id))
        });
        Ok(tasks)
    }

    pub fn put_sync(&self, task: &CloneTask) -> std::io::Result<()> {
        let mut file = tempfile::NamedTempFile::new_in(&self.dir)?;
        file.write_all(&gitfleet_proto::to_json(task))?;
        file.as_file().sync_data()?;
        file.persist(self.path_of(&task.id)).map_err(|e| e.error)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gitfleet_proto::Operation;

    #[test]
    fn records_survive_and_garbage_is_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FileStore::open(dir.path()).expect("open");
        let task = CloneTask::new(
            "00000000000000ab".into(),
            "git://h/o/r".into(),
            Operation::Mirror,
            "/x".into(),
            jiff::Timestamp::UNIX_EPOCH,
        );
        store.put_sync(&task).expect("put");
        std::fs::write(dir.path().join("tasks/broken.json"), b"{\"id\":").expect("write");
        let all = store.load_all_sync().expect("load");
        assert_eq!(all, vec![task.clone()]);
        assert_eq!(store.get(&task.id).expect("get"), Some(task));
    }
}
