//! The programs the exit-only hot path hands its rarer syscalls to.
//!
//! One `sys_exit` program that followed every syscall family itself grew
//! past what the 5.10 and 6.1 verifiers accept (a million instructions
//! walked). So the hot program keeps only the read/write family and
//! tail-calls one program per other family through the
//! [`crate::names::EXIT_PATHS`] program array; each is verified alone.

/// A slot of the [`crate::names::EXIT_PATHS`] program array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitPath {
    /// Syscalls that create, join or free descriptors: pipe, socketpair,
    /// socket, connect, bind, accept, dup2/dup3, close, close_range, exec.
    Rare = 0,
    /// splice, tee and sendfile: bytes moved between two descriptors.
    Moved = 1,
    /// sendmmsg and recvmmsg: bytes summed over a vector of messages.
    Mmsg = 2,
    /// A read/write-family syscall the hot path could not count in its
    /// descriptor's cache entry (the first of a direction, the first after
    /// an idle gap, one that met a full pipe, or a descriptor just walked):
    /// counted in `FLOWS` from what the hot path left in `FLOW_ARGS`.
    Flow = 3,
}

impl ExitPath {
    /// Every slot, in slot order.
    pub const ALL: [Self; 4] = [Self::Rare, Self::Moved, Self::Mmsg, Self::Flow];

    /// Slots in the program array.
    pub const SLOTS: u32 = Self::ALL.len() as u32;

    /// The program serving this slot in the `tp_btf` flavour.
    pub const fn btf_program(self) -> &'static str {
        match self {
            Self::Rare => "exit_rare_btf",
            Self::Moved => "exit_moved_btf",
            Self::Mmsg => "exit_mmsg_btf",
            Self::Flow => "exit_flow_btf",
        }
    }

    /// The program serving this slot in the `raw_tp` flavour.
    pub const fn raw_program(self) -> &'static str {
        match self {
            Self::Rare => "exit_rare_raw",
            Self::Moved => "exit_moved_raw",
            Self::Mmsg => "exit_mmsg_raw",
            Self::Flow => "exit_flow_raw",
        }
    }
}
