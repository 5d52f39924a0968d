//! resonance: which process talks to which, seen from the kernel.

pub mod cli;
