//! resonance: which process talks to which, seen from the kernel.

pub mod cli;
pub mod predict;
pub mod replay;
pub mod scenario;
pub mod trace;
