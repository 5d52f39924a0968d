//! Moving the counts the hot path keeps in descriptor cache entries into
//! `FLOWS` (see `resonance_common::fd_entry`), so that reading `FLOWS`
//! stays the whole truth.
//!
//! The move is a program the agent runs with `BPF_PROG_TEST_RUN` just
//! before it reads `FLOWS`; it walks `FDS` with `bpf_for_each_map_elem`.
//! Until [`FdCountMover::start`] succeeds the hot path counts every syscall
//! in `FLOWS` itself (the `ENTRY_COUNTS` switch stays 0): a kernel without
//! that helper (before 5.13) costs speed, never counts.

use aya::{
    Ebpf,
    maps::{Array, MapData},
    programs::{RawTracePoint, RawTracePointRunOptions, TestRun},
};
use resonance_common::names;

/// Why the counts cannot be moved (the hot path then counts in `FLOWS`).
#[derive(Debug, thiserror::Error)]
pub enum MoveError {
    /// The object lacks the program or a map.
    #[error("the embedded eBPF object has no {0}")]
    Missing(&'static str),
    /// The kernel refused to load or run the program.
    #[error("{what} the {name}: {source}", name = names::MOVE_FD_COUNTS)]
    Program {
        /// Loading or running.
        what: &'static str,
        /// What aya said.
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    /// A map had an unexpected shape or could not be written.
    #[error("eBPF map {name}: {source}")]
    Map {
        /// Map name.
        name: &'static str,
        /// What aya said.
        #[source]
        source: Box<aya::maps::MapError>,
    },
}

/// The switch that lets the hot path count in cache entries; the program
/// itself stays in the `Ebpf` that loaded it.
pub struct FdCountMover {
    switch: Array<MapData, u32>,
    on: bool,
}

/// What one run did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MoveReport {
    /// Retired entries (freed descriptors) emptied and deleted.
    pub retired: u64,
}

impl FdCountMover {
    /// Loads the program, runs it once (which proves it runs here), and
    /// turns counting in cache entries on. On error nothing is switched on.
    pub fn start(ebpf: &mut Ebpf) -> Result<Self, MoveError> {
        let program: &mut RawTracePoint = ebpf
            .program_mut(names::MOVE_FD_COUNTS)
            .ok_or(MoveError::Missing(names::MOVE_FD_COUNTS))?
            .try_into()
            .map_err(|e| program_error("loading", e))?;
        program.load().map_err(|e| program_error("loading", e))?;
        Self::run(ebpf)?;
        let map = ebpf
            .take_map(names::ENTRY_COUNTS)
            .ok_or(MoveError::Missing(names::ENTRY_COUNTS))?;
        let map_error = |source| MoveError::Map {
            name: names::ENTRY_COUNTS,
            source: Box::new(source),
        };
        let mut switch: Array<MapData, u32> = Array::try_from(map).map_err(map_error)?;
        switch.set(0, 1, 0).map_err(map_error)?;
        Ok(Self { switch, on: true })
    }

    /// Moves every entry's counts into `FLOWS` and deletes the retired
    /// entries it emptied.
    pub fn run(ebpf: &Ebpf) -> Result<MoveReport, MoveError> {
        let program: &RawTracePoint = ebpf
            .program(names::MOVE_FD_COUNTS)
            .ok_or(MoveError::Missing(names::MOVE_FD_COUNTS))?
            .try_into()
            .map_err(|e| program_error("running", e))?;
        let result = program
            .test_run(RawTracePointRunOptions::new())
            .map_err(|e| program_error("running", e))?;
        Ok(MoveReport {
            retired: u64::from(result.return_value),
        })
    }

    /// Turns counting in cache entries off, so that every syscall counts
    /// in `FLOWS` again (after a move failed: counts left in entries would
    /// not reach the agent until one succeeds).
    pub fn switch_off(&mut self) {
        match self.switch.set(0, 0, 0) {
            Ok(()) => self.on = false,
            Err(error) => {
                log::warn!("could not turn counting in descriptor entries off: {error}");
            }
        }
    }

    /// Whether the hot path counts in descriptor entries.
    pub fn is_on(&self) -> bool {
        self.on
    }
}

fn program_error(what: &'static str, source: aya::programs::ProgramError) -> MoveError {
    MoveError::Program {
        what,
        source: Box::new(source),
    }
}
