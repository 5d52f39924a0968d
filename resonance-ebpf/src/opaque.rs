//! Hiding what the verifier knows about a value.
//!
//! The verifier walks a program once per distinct state reaching each
//! point: a value that is a different constant on each way there (a
//! descriptor walk that found a pipe, a FIFO or a socket; a loop's sum at
//! each way out) makes everything after it be walked once per way. A copy
//! through a helper comes back as unknown values, and those walks become
//! one. Costs one helper call: used only off the common path.

use aya_ebpf::helpers::generated::bpf_probe_read_kernel;

/// `value`, with everything the verifier knew about it forgotten.
#[inline(always)]
pub fn opaque<T: Copy>(value: T) -> T {
    let mut copy = value;
    // SAFETY: copies a local of ours into another; on the impossible
    // failure `copy` still holds `value`. The helper's writes leave the
    // destination as unknown data to the verifier, which is the point.
    unsafe {
        bpf_probe_read_kernel(
            (&raw mut copy).cast(),
            size_of::<T>() as u32,
            (&raw const value).cast(),
        );
    }
    copy
}
