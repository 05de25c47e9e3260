//! The HTTP API's wire types, one type per JSON shape: what the gateway answers
//! ([`views`]), what it accepts ([`requests`]) and the codes of its errors
//! ([`ErrorCode`]). The gateway serves them and its OpenAPI document describes
//! them; clients (`warren-client`, the CLI) read them, so a renamed field fails to
//! compile on both sides.
//!
//! Plain data only: how the gateway builds a view from its store's rows stays in
//! the gateway. Times are Unix seconds.

mod error_code;
pub mod requests;
pub mod snapshots;
pub mod views;

pub use self::error_code::{ErrorCode, UnknownErrorCode};
pub use self::requests::*;
pub use self::snapshots::*;
pub use self::views::*;
