//! resonance: which process talks to which, seen from the kernel.
//!
//! Data flows one way through the modules: `probe` loads the kernel
//! programs that count traffic per flow; `decode` turns ring-buffer records
//! into typed events; `aggregate` joins writers to readers and attributes
//! them to processes; `observer` drives one observation session; `cli`
//! prints the result.

pub mod aggregate;
pub mod cli;
pub mod decode;
pub mod observer;
pub mod probe;
pub mod report;
pub mod store;
