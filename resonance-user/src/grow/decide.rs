//! How large a blocked pipe should become, and what stops it: a pure
//! function of the pipe, its pair's history, the host's limits and the
//! agent's budget, so every rule is tested without a pipe.

use serde::Serialize;

/// Pages a new pipe gets (`PIPE_DEF_BUFFERS`): what a user's next pipe
/// needs below the soft limit to get its full size.
pub const DEFAULT_PIPE_PAGES: u64 = 16;

/// The kernel's limits on pipe sizes, read from `/proc/sys/fs` (the agent
/// holds `CAP_SYS_RESOURCE`, so the kernel would not enforce them on it:
/// the agent keeps them itself).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// `pipe-max-size`, bytes.
    pub pipe_max_size: u64,
    /// `pipe-user-pages-soft` (0: none): past it a user's new pipes get one
    /// or two pages, which would hurt the very user growth helps.
    pub user_pages_soft: u64,
    /// `pipe-user-pages-hard` (0: none).
    pub user_pages_hard: u64,
    /// Bytes per page.
    pub page_size: u64,
}

/// What the decision knows about one blocked pipe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ask {
    /// The pipe's capacity now, bytes.
    pub current: u64,
    /// Bytes of the write that found it full.
    pub write_bytes: u64,
    /// The size this pair's earlier pipes were grown to, if any.
    pub learned: Option<u64>,
    /// Pipe pages the pipe's user holds now (this pipe included).
    pub user_pages: u64,
    /// Bytes the agent's growth adds host-wide now.
    pub budget_used: u64,
}

/// The configured bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    /// Largest size the policy allows, bytes.
    pub max_size: u64,
    /// Bytes all grown pipes may add together.
    pub memory_budget: u64,
}

/// What held a pipe below the size it wanted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Limit {
    /// `grow.max_size`.
    PolicyMaxSize,
    /// `/proc/sys/fs/pipe-max-size`.
    PipeMaxSize,
    /// `pipe-user-pages-soft`, with room left for the user's next pipe.
    UserSoftLimit,
    /// `pipe-user-pages-hard`.
    UserHardLimit,
    /// `grow.memory_budget`.
    MemoryBudget,
}

impl Limit {
    /// The name used in logs, `explain` and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PolicyMaxSize => "policy_max_size",
            Self::PipeMaxSize => "pipe_max_size",
            Self::UserSoftLimit => "user_soft_limit",
            Self::UserHardLimit => "user_hard_limit",
            Self::MemoryBudget => "memory_budget",
        }
    }
}

/// The decision for one blocked pipe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Set the capacity to `to` bytes (a power of two pages, above the
    /// current size); `limit` says what held it below what it wanted.
    Grow {
        /// New capacity, bytes.
        to: u64,
        /// Whether the size came from the pair's earlier pipes.
        learned: bool,
        /// What capped it, if anything did.
        limit: Option<Limit>,
    },
    /// Leave it: it is already as large as it wants to be.
    LargeEnough,
    /// Leave it: `0` allows no more.
    AtLimit(Limit),
}

/// The size a pipe that made a writer wait should have, within the bounds.
///
/// It wants twice its size, or room for two of the writes that met it full
/// (a writer and a reader each working on one), or what the pair's earlier
/// pipes needed, whichever is largest; then every limit may only lower it.
/// Sizes are powers of two pages, as the kernel rounds them.
pub fn decide(ask: Ask, bounds: Bounds, limits: Limits) -> Decision {
    let page = limits.page_size.max(1);
    let doubled = ask.current.saturating_mul(2);
    let two_writes = ask
        .write_bytes
        .saturating_mul(2)
        .checked_next_power_of_two();
    let mut wanted = doubled.max(two_writes.unwrap_or(u64::MAX));
    let learned = ask.learned.is_some_and(|size| size > wanted);
    if let Some(size) = ask.learned {
        wanted = wanted.max(size);
    }
    let headroom = |limit: u64, reserve: u64| {
        let pages = limit.saturating_sub(ask.user_pages.saturating_add(reserve));
        ask.current.saturating_add(pages.saturating_mul(page))
    };
    let mut caps = vec![
        (bounds.max_size, Limit::PolicyMaxSize),
        (limits.pipe_max_size, Limit::PipeMaxSize),
        (
            ask.current
                .saturating_add(bounds.memory_budget.saturating_sub(ask.budget_used)),
            Limit::MemoryBudget,
        ),
    ];
    if limits.user_pages_soft > 0 {
        caps.push((
            headroom(limits.user_pages_soft, DEFAULT_PIPE_PAGES),
            Limit::UserSoftLimit,
        ));
    }
    if limits.user_pages_hard > 0 {
        caps.push((headroom(limits.user_pages_hard, 0), Limit::UserHardLimit));
    }
    let mut to = wanted;
    let mut limit = None;
    for (cap, which) in caps {
        if cap < to {
            to = cap;
            limit = Some(which);
        }
    }
    let to = pages_power_of_two_at_most(to, page);
    match (to > ask.current, limit) {
        (true, _) => Decision::Grow { to, learned, limit },
        (false, Some(limit)) => Decision::AtLimit(limit),
        (false, None) => Decision::LargeEnough,
    }
}

/// The largest `page << k` not above `bytes` (0 when not even one page
/// fits).
fn pages_power_of_two_at_most(bytes: u64, page: u64) -> u64 {
    let pages = bytes / page;
    if pages == 0 {
        return 0;
    }
    let power = 1u64 << (63 - pages.leading_zeros());
    power.saturating_mul(page)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * KIB;

    fn limits() -> Limits {
        Limits {
            pipe_max_size: MIB,
            user_pages_soft: 16384,
            user_pages_hard: 0,
            page_size: 4096,
        }
    }

    fn bounds() -> Bounds {
        Bounds {
            max_size: 4 * MIB,
            memory_budget: 64 * MIB,
        }
    }

    fn ask(current: u64, write_bytes: u64) -> Ask {
        Ask {
            current,
            write_bytes,
            learned: None,
            user_pages: 16,
            budget_used: 0,
        }
    }

    #[test]
    fn a_small_write_doubles_the_pipe_and_a_large_one_makes_room_for_two() {
        assert_eq!(
            decide(ask(64 * KIB, 4 * KIB), bounds(), limits()),
            Decision::Grow {
                to: 128 * KIB,
                learned: false,
                limit: None
            }
        );
        assert_eq!(
            decide(ask(64 * KIB, 256 * KIB), bounds(), limits()),
            Decision::Grow {
                to: 512 * KIB,
                learned: false,
                limit: None
            }
        );
    }

    #[test]
    fn pipe_max_size_caps_even_a_policy_that_allows_more() {
        assert_eq!(
            decide(ask(512 * KIB, 1024 * KIB), bounds(), limits()),
            Decision::Grow {
                to: MIB,
                learned: false,
                limit: Some(Limit::PipeMaxSize)
            }
        );
        assert_eq!(
            decide(ask(MIB, 256 * KIB), bounds(), limits()),
            Decision::AtLimit(Limit::PipeMaxSize)
        );
    }

    #[test]
    fn a_learned_size_is_reached_at_once() {
        let first = Ask {
            learned: Some(MIB),
            ..ask(64 * KIB, 4 * KIB)
        };
        assert_eq!(
            decide(first, bounds(), limits()),
            Decision::Grow {
                to: MIB,
                learned: true,
                limit: None
            }
        );
    }

    #[test]
    fn the_soft_limit_keeps_room_for_the_users_next_pipe() {
        // 16384 pages soft; the user holds 16300: 84 - 16 = 68 pages may be
        // added, and 16 + 68 = 84 pages rounds down to 64 pages.
        let near = Ask {
            user_pages: 16300,
            ..ask(64 * KIB, 256 * KIB)
        };
        assert_eq!(
            decide(near, bounds(), limits()),
            Decision::Grow {
                to: 256 * KIB,
                learned: false,
                limit: Some(Limit::UserSoftLimit)
            }
        );
        let full = Ask {
            user_pages: 16384 - 16,
            ..ask(64 * KIB, 256 * KIB)
        };
        assert_eq!(
            decide(full, bounds(), limits()),
            Decision::AtLimit(Limit::UserSoftLimit)
        );
    }

    #[test]
    fn a_zero_soft_limit_is_no_limit_and_the_hard_one_counts_too() {
        let unlimited = Limits {
            user_pages_soft: 0,
            ..limits()
        };
        let heavy = Ask {
            user_pages: 1 << 30,
            ..ask(64 * KIB, 256 * KIB)
        };
        assert!(matches!(
            decide(heavy, bounds(), unlimited),
            Decision::Grow { to, .. } if to == 512 * KIB
        ));
        let hard = Limits {
            user_pages_hard: 20,
            ..unlimited
        };
        assert_eq!(
            decide(
                Ask {
                    user_pages: 20,
                    ..heavy
                },
                bounds(),
                hard
            ),
            Decision::AtLimit(Limit::UserHardLimit)
        );
    }

    #[test]
    fn the_budget_bounds_what_all_grown_pipes_add() {
        let tight = Bounds {
            memory_budget: MIB,
            ..bounds()
        };
        let used = Ask {
            budget_used: MIB - 64 * KIB,
            ..ask(64 * KIB, 256 * KIB)
        };
        assert_eq!(
            decide(used, tight, limits()),
            Decision::Grow {
                to: 128 * KIB,
                learned: false,
                limit: Some(Limit::MemoryBudget)
            }
        );
        let spent = Ask {
            budget_used: MIB,
            ..used
        };
        assert_eq!(
            decide(spent, tight, limits()),
            Decision::AtLimit(Limit::MemoryBudget)
        );
    }

    #[test]
    fn sizes_are_powers_of_two_pages() {
        assert_eq!(pages_power_of_two_at_most(3 * 4096, 4096), 2 * 4096);
        assert_eq!(pages_power_of_two_at_most(4095, 4096), 0);
        assert_eq!(pages_power_of_two_at_most(MIB, 4096), MIB);
        assert_eq!(pages_power_of_two_at_most(MIB + 1, 16384), MIB);
    }
}
