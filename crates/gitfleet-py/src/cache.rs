//! `NativeCache`: gitfleet-cache's `Cache` for Python.

use std::path::PathBuf;
use std::time::Duration;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

/// A cache root (gitfleet-cache) opened by this process. Every method answers JSON:
/// `{"ok": ...}` or `{"error": {"code", "message"}}` (the Python layer returns errors as
/// `Exception` values, as the cache documents say). Operations wait without the interpreter.
#[pyclass(frozen, module = "gitfleet._native")]
pub(crate) struct NativeCache {
    cache: gitfleet_cache::Cache,
}

fn answer<T: serde::Serialize>(result: Result<T, gitfleet_cache::CacheError>) -> String {
    match result {
        Ok(value) => serde_json::json!({ "ok": value }).to_string(),
        Err(e) => serde_json::json!({
            "error": {"code": e.code(), "message": e.to_string()}
        })
        .to_string(),
    }
}

impl NativeCache {
    fn with<T: serde::Serialize>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&gitfleet_cache::Cache) -> Result<T, gitfleet_cache::CacheError> + Send,
    ) -> PyResult<String> {
        Ok(py.detach(|| answer(f(&self.cache))))
    }
}

#[pymethods]
impl NativeCache {
    /// Opens (creating) the cache at `root`: entries are STALE after `timeout_s` seconds, and
    /// above `max_bytes` the least recently used are evicted. `git_config`: `(key, value)`
    /// pairs written into every git entry's repository config.
    #[new]
    #[pyo3(signature = (root, *, timeout_s, max_bytes, git_config = Vec::new()))]
    fn new(
        py: Python<'_>,
        root: PathBuf,
        timeout_s: f64,
        max_bytes: u64,
        git_config: Vec<(String, String)>,
    ) -> PyResult<NativeCache> {
        if !(timeout_s.is_finite() && timeout_s >= 0.0) {
            return Err(PyValueError::new_err(
                "the timeout must be a non-negative number",
            ));
        }
        let mut config = gitfleet_cache::CacheConfig::new(root);
        config.timeout = Duration::from_secs_f64(timeout_s.min(1e12));
        config.max_bytes = max_bytes;
        config.git_config = git_config;
        gitfleet_git::init_tls();
        let cache = py
            .detach(|| gitfleet_cache::Cache::open(config))
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        Ok(NativeCache { cache })
    }

    /// Offers `username`/`token` to `host` (an exact name or `*.suffix`) for git sources.
    fn add_credentials(&self, host: &str, username: &str, token: &str) {
        self.cache.add_credentials(host, username, token);
    }

    #[getter]
    fn root(&self) -> PathBuf {
        self.cache.root().to_path_buf()
    }

    #[pyo3(signature = (source, name = None))]
    fn add(&self, py: Python<'_>, source: &str, name: Option<&str>) -> PyResult<String> {
        self.with(py, |c| c.add(source, name))
    }

    fn refresh(&self, py: Python<'_>, name: &str) -> PyResult<String> {
        self.with(py, |c| c.refresh(name))
    }

    fn get(&self, py: Python<'_>, name: &str) -> PyResult<String> {
        self.with(py, |c| c.get(name))
    }

    fn list(&self, py: Python<'_>) -> PyResult<String> {
        self.with(py, |c| c.list())
    }

    fn path(&self, py: Python<'_>, name: &str) -> PyResult<String> {
        self.with(py, |c| c.path(name))
    }

    fn remove(&self, py: Python<'_>, name: &str) -> PyResult<String> {
        self.with(py, |c| c.remove(name))
    }

    fn clear(&self, py: Python<'_>) -> PyResult<String> {
        self.with(py, |c| c.clear())
    }

    fn stats(&self, py: Python<'_>) -> PyResult<String> {
        self.with(py, |c| c.stats())
    }
}
