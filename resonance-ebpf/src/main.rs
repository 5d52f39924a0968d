//! resonance's kernel programs.
//!
//! `programs` holds one file per syscall family; each resolves the file
//! descriptor it is about through `fdwalk`, counts bytes in `flows` (kept in
//! `maps`) and reports rare happenings through `emit`. Nothing here holds
//! logic of its own.
#![no_std]
#![no_main]
// Atomic adds on map values (`flows::add`): the bpf target lacks AtomicU64 RMW.
#![allow(internal_features)]
#![feature(core_intrinsics)]
// Map keys and values go to helpers by reference on purpose: a by-value
// FlowStats would be copied onto the 512-byte BPF stack.
#![allow(clippy::needless_borrows_for_generic_args)]

mod emit;
mod fdcache;
mod fdwalk;
mod flows;
mod globals;
mod maps;
mod opaque;
mod programs;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach this.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
