//! A service pair with its kind: the one key of the scores, the history
//! store, the traces and the model. The kind is text, since a broker open
//! (`channel`) is no kernel kind; the probes' kinds are named by
//! `ChannelKind::as_str`.

use serde::{Deserialize, Serialize};

/// Who talks to whom over what.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PairKey {
    /// Initiating service.
    pub src: String,
    /// Receiving service.
    pub dst: String,
    /// Channel kind: `pipe`, `unix_stream`, ..., `channel` for broker opens.
    pub kind: String,
}
