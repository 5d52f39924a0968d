//! A service pair with its kind, as the history store, the traces and the
//! model name it: the kind is text, since a broker open (`channel`) is no
//! kernel kind. The scores key pairs by the probes' typed kind
//! ([`crate::score::PairKey`]) and convert with `model_key`.

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
