//! `gitfleet._native`: the engine and the actors behind the Python package, on a root of their
//! own. The Python layer (`python/gitfleet`) shapes what users see; this module only starts the
//! actors, hands them work and answers with task records as JSON (the same records `gitfleet
//! status --json` prints), so that the two never disagree on what a task is.
//!
//! Every call that waits lets go of the interpreter (`Python::detach`): other Python threads and
//! the asyncio loop's executor threads run meanwhile.

mod cache;
mod cluster;
mod session;

use std::time::Duration;

use gitfleet_proto::Operation;
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;

pyo3::create_exception!(
    _native,
    GitfleetError,
    PyException,
    "A gitfleet operation failed: the root cannot be used, or the actors are gone."
);

fn failed(e: impl std::fmt::Display) -> PyErr {
    GitfleetError::new_err(e.to_string())
}

/// `mirror` or `clone` (with a working tree), as the Python layer names them.
fn operation_of(name: &str) -> PyResult<Operation> {
    match name {
        "mirror" => Ok(Operation::Mirror),
        "clone" => Ok(Operation::Checkout),
        other => Err(PyValueError::new_err(format!(
            "operation must be 'mirror' or 'clone', not {other:?}"
        ))),
    }
}

/// A timeout in seconds from Python: None for no limit.
fn seconds(timeout: Option<f64>) -> PyResult<Option<Duration>> {
    match timeout {
        Some(t) if !(t.is_finite() && t >= 0.0) => Err(PyValueError::new_err(
            "timeout must be a non-negative number of seconds",
        )),
        Some(t) => Ok(Some(Duration::from_secs_f64(t.min(1e9)))),
        None => Ok(None),
    }
}

/// The commits a log asks for: at most `max_count` (1 to [`MAX_LOG`]), committed since `since`
/// (an RFC 3339 time) when given.
fn log_request(
    id: String,
    since: Option<String>,
    max_count: usize,
) -> PyResult<gitfleet_proto::LogRequest> {
    if !(1..=MAX_LOG).contains(&max_count) {
        return Err(PyValueError::new_err(format!(
            "max_count must be between 1 and {MAX_LOG}, not {max_count}"
        )));
    }
    let since = since
        .map(|text| {
            text.parse::<jiff::Timestamp>().map_err(|e| {
                PyValueError::new_err(format!(
                    "since must be an RFC 3339 time such as 2026-01-31T12:00:00Z, not {text:?}: {e}"
                ))
            })
        })
        .transpose()?;
    Ok(gitfleet_proto::LogRequest {
        task: id,
        since,
        max_count: Some(max_count),
    })
}

/// The most commits one log answers (a cluster's limit too).
const MAX_LOG: usize = gitfleet_cluster::api::MAX_LOG;

/// One answer per input of a submit, as JSON: `{"input", "id"}` or `{"input", "error":
/// {"code", "message"}}`, the same from the embedded actors and from a cluster.
fn submitted(input: &str, outcome: Result<String, (String, String)>) -> serde_json::Value {
    match outcome {
        Ok(id) => serde_json::json!({"input": input, "id": id}),
        Err((code, message)) => serde_json::json!({
            "input": input,
            "error": {"code": code, "message": message},
        }),
    }
}

/// `text` with the user information of every http(s) URL in it masked (tokens are sent as user
/// names); an ssh or git user name stays.
#[pyfunction]
fn scrub_userinfo(text: &str) -> String {
    gitfleet_git::scrub_userinfo(text)
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<session::Session>()?;
    m.add_class::<cluster::ClusterSession>()?;
    m.add_class::<cache::NativeCache>()?;
    m.add_function(wrap_pyfunction!(scrub_userinfo, m)?)?;
    m.add("GitfleetError", m.py().get_type::<GitfleetError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
