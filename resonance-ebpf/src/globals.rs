//! Load-time globals: kernel field offsets and probe settings.

use resonance_common::{Offsets, ProbeConfig};

/// Set by the agent from the running kernel's BTF (`names::OFFSETS`).
#[unsafe(no_mangle)]
pub(crate) static OFFSETS: Offsets = Offsets::ZERO;

/// Set by the agent (`names::CONFIG`).
#[unsafe(no_mangle)]
static CONFIG: ProbeConfig = ProbeConfig::ZERO;

/// Reads one offset; volatile so the compiler cannot fold the zero default.
macro_rules! offset {
    ($field:ident) => {
        // SAFETY: reading a field of a static; volatile only defeats folding.
        unsafe { core::ptr::read_volatile(&raw const crate::globals::OFFSETS.$field) }
    };
}
pub(crate) use offset;

/// Whether the agent filled in the offsets.
#[inline(always)]
pub fn offsets_loaded() -> bool {
    // SAFETY: as in `offset!`.
    unsafe { core::ptr::read_volatile(&raw const OFFSETS.loaded) == 1 }
}

/// The agent's own tgid, whose syscalls are not observed.
#[inline(always)]
pub fn agent_tgid() -> u32 {
    // SAFETY: as in `offset!`.
    unsafe { core::ptr::read_volatile(&raw const CONFIG.agent_tgid) }
}

/// Whether the agent wants end latency measured (`ProbeConfig::latency`).
/// A load-time constant: the verifier drops the branch not taken.
#[inline(always)]
pub fn latency() -> bool {
    // SAFETY: as in `offset!`.
    unsafe { core::ptr::read_volatile(&raw const CONFIG.latency) == 1 }
}

/// Silence after which a flow counts as starting anew.
#[inline(always)]
pub fn idle_gap_ns() -> u64 {
    // SAFETY: as in `offset!`.
    unsafe { core::ptr::read_volatile(&raw const CONFIG.idle_gap_ns) }
}

/// The kernel's page size (one pipe buffer slot), from the agent.
#[inline(always)]
pub fn page_size() -> u64 {
    // SAFETY: as in `offset!`.
    unsafe { core::ptr::read_volatile(&raw const CONFIG.page_size) }
}
