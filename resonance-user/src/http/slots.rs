//! The cap on the endpoint's open connections. A scraper must get through
//! however many connections sit open doing nothing (a port scan, a
//! misbehaving client, keep-alive leftovers): at the cap, a new
//! connection takes the slot of the oldest one not answering a request,
//! and only when every slot is answering one is the newcomer turned away.

use std::collections::BTreeMap;

/// Connection number, in order of arrival.
pub type ConnectionId = u64;

/// What to do with a new connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Serve it.
    Admitted {
        /// Its number.
        id: ConnectionId,
        /// A connection to close to make room for it.
        evict: Option<ConnectionId>,
    },
    /// Every slot is answering a request: close the new one.
    Refused,
}

/// Open connections and whether each is answering a request.
#[derive(Debug)]
pub struct Slots {
    max: usize,
    next: ConnectionId,
    /// Open connection → requests in progress on it.
    open: BTreeMap<ConnectionId, usize>,
}

impl Slots {
    /// At most `max` (at least 1) connections at once.
    pub fn new(max: usize) -> Self {
        Self {
            max: max.max(1),
            next: 0,
            open: BTreeMap::new(),
        }
    }

    /// A connection arrived.
    pub fn admit(&mut self) -> Admission {
        let evict = if self.open.len() >= self.max {
            // Ids grow with arrival: the first idle one is the oldest.
            match self.open.iter().find(|(_, busy)| **busy == 0) {
                Some((&id, _)) => {
                    self.open.remove(&id);
                    Some(id)
                }
                None => return Admission::Refused,
            }
        } else {
            None
        };
        let id = self.next;
        self.next += 1;
        self.open.insert(id, 0);
        Admission::Admitted { id, evict }
    }

    /// A request started on `id`.
    pub fn request_started(&mut self, id: ConnectionId) {
        if let Some(busy) = self.open.get_mut(&id) {
            *busy += 1;
        }
    }

    /// A request on `id` was answered.
    pub fn request_done(&mut self, id: ConnectionId) {
        if let Some(busy) = self.open.get_mut(&id) {
            *busy = busy.saturating_sub(1);
        }
    }

    /// `id` closed (or was evicted).
    pub fn closed(&mut self, id: ConnectionId) {
        self.open.remove(&id);
    }

    /// Connections open now.
    pub fn len(&self) -> usize {
        self.open.len()
    }

    /// Whether none is open.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(admission: Admission) -> ConnectionId {
        match admission {
            Admission::Admitted { id, .. } => id,
            Admission::Refused => panic!("refused"),
        }
    }

    #[test]
    fn at_the_cap_the_oldest_idle_connection_makes_room() {
        let mut slots = Slots::new(3);
        let a = id(slots.admit());
        let b = id(slots.admit());
        let c = id(slots.admit());
        slots.request_started(a);
        assert_eq!(
            slots.admit(),
            Admission::Admitted {
                id: c + 1,
                evict: Some(b)
            },
            "a is answering a request: b, the oldest idle one, goes"
        );
        assert_eq!(slots.len(), 3);
        slots.request_done(a);
        assert_eq!(
            slots.admit(),
            Admission::Admitted {
                id: c + 2,
                evict: Some(a)
            }
        );
    }

    #[test]
    fn only_when_every_slot_answers_a_request_is_a_newcomer_refused() {
        let mut slots = Slots::new(2);
        let a = id(slots.admit());
        let b = id(slots.admit());
        slots.request_started(a);
        slots.request_started(b);
        assert_eq!(slots.admit(), Admission::Refused);
        slots.closed(b);
        assert!(matches!(
            slots.admit(),
            Admission::Admitted { evict: None, .. }
        ));
    }

    #[test]
    fn a_flood_of_idle_connections_never_holds_more_than_the_cap() {
        let mut slots = Slots::new(64);
        for _ in 0..500 {
            assert!(matches!(slots.admit(), Admission::Admitted { .. }));
        }
        assert_eq!(slots.len(), 64);
        let scrape = id(slots.admit());
        slots.request_started(scrape);
        for _ in 0..500 {
            slots.admit();
        }
        assert!(
            slots.open.contains_key(&scrape),
            "a connection answering a scrape is never evicted"
        );
    }
}
