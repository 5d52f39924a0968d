//! Loading and attaching the kernel programs: the only owner of `aya::Ebpf`.
//!
//! `preflight` checks what the machine must offer (privileges, BTF) and
//! says in one sentence what is missing; `offsets` reads the struct field
//! offsets the programs need from the running kernel's BTF; `attach` loads
//! the embedded object with those offsets and attaches every program;
//! `fd_counts` moves the counts the hot path keeps in descriptor entries
//! into `FLOWS` before each read.
//! Dropping the returned [`Probes`] detaches everything.

mod attach;
mod fd_counts;
mod offsets;
mod preflight;
mod refused;

pub use attach::{AttachStatus, PROBE_MODE_ENV, ProbeMode, ProbeSet, Probes, TRACEPOINTS};
pub use fd_counts::{FdCountMover, MoveError, MoveReport};
pub use offsets::{OffsetError, read_offsets};
pub use preflight::{PreflightError, TRACEFS, VMLINUX_BTF, preflight};

/// Everything that can stop the probes from loading.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The machine lacks something (privilege, BTF, ...).
    #[error(transparent)]
    Preflight(#[from] PreflightError),
    /// The kernel's BTF lacks a field we need.
    #[error(transparent)]
    Offsets(#[from] OffsetError),
    /// The kernel refused the object or a program.
    #[error("the kernel refused to load the eBPF programs: {0}")]
    Load(Box<aya::EbpfError>),
    /// A program could not be loaded or attached.
    #[error("could not load or attach {program} to {category}:{name}: {source}")]
    Attach {
        /// Program name in the object.
        program: &'static str,
        /// Tracepoint category.
        category: &'static str,
        /// Tracepoint name.
        name: &'static str,
        /// What aya said.
        source: Box<aya::programs::ProgramError>,
    },
    /// The object lacks a program or map the agent expects.
    #[error("the embedded eBPF object has no {0}; it does not match this agent")]
    Missing(&'static str),
    /// This kernel's verifier refused the mode before (see `refused`).
    #[error(
        "{mode} was refused by this kernel's verifier before (program too complex for it); \
         noted in {}, delete it to try again",
        file.display()
    )]
    RefusedBefore {
        /// The mode.
        mode: ProbeMode,
        /// Where the refusal is noted.
        file: std::path::PathBuf,
    },
    /// `--probe-mode` or `RESONANCE_PROBE_MODE` named no mode.
    #[error("unknown probe mode {0:?}: expected tp_btf, raw_tp or tracepoint")]
    UnknownMode(String),
    /// The page size (the size of a pipe slot) could not be read.
    #[error("reading the kernel's page size: {0}")]
    PageSize(std::io::Error),
    /// A map had an unexpected shape.
    #[error("eBPF map {name}: {source}")]
    Map {
        /// Map name.
        name: &'static str,
        /// What aya said.
        source: Box<aya::maps::MapError>,
    },
}
