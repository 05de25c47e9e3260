//! Where sandboxes run. This issue has one backend, [`process::ProcessBackend`]; the
//! Docker backend is its own issue.

pub mod process;
