//! The broker's per-pair state: keyed by requester and service, bounded
//! like every per-pair map ([`crate::plan::bounded::BoundedMap`]).

/// A pair: requester name, service.
pub type Pair = (String, String);

/// A map from pairs to `V` holding at most `max` entries.
pub type PairMap<V> = crate::plan::bounded::BoundedMap<Pair, V>;
