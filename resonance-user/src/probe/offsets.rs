//! Kernel struct field offsets, read from BTF at load time.
//!
//! aya-ebpf has no CO-RE relocation, so the programs get every offset they
//! read as a global. Each field is named by a path through nested structs;
//! members inside anonymous structs and unions are found by searching them.

use std::path::Path;

use btf_rs::{Btf, Type};
use resonance_common::Offsets;

/// A field the kernel's BTF does not describe the way we expect.
#[derive(Debug, thiserror::Error)]
pub enum OffsetError {
    /// BTF could not be read.
    #[error("reading kernel BTF from {path}: {message}")]
    Read {
        /// The BTF file.
        path: String,
        /// What the parser said.
        message: String,
    },
    /// A struct is missing.
    #[error("kernel BTF has no struct {0}: this kernel's layout is not supported")]
    NoStruct(String),
    /// A member is missing.
    #[error(
        "kernel BTF has no field {field} in struct {strukt}: this kernel's layout is not supported"
    )]
    NoField {
        /// The struct searched.
        strukt: String,
        /// The missing member.
        field: String,
    },
    /// A member is a bitfield where we need bytes.
    #[error("field {0} is a bitfield in this kernel; resonance cannot read it")]
    Bitfield(String),
    /// `RESONANCE_TEST_CORRUPT_OFFSET` named no known field.
    #[error("RESONANCE_TEST_CORRUPT_OFFSET names unknown field {0}")]
    UnknownCorruption(String),
}

/// Environment variable for tests: adds 8 bytes to the named field's offset
/// so the suite can prove it notices a wrong layout.
pub const CORRUPT_OFFSET_ENV: &str = "RESONANCE_TEST_CORRUPT_OFFSET";

/// Reads every offset the programs need from the BTF file at `path`.
pub fn read_offsets(path: &Path) -> Result<Offsets, OffsetError> {
    let btf = Btf::from_file(path).map_err(|e| OffsetError::Read {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    let layout = Layout { btf: &btf };
    let socket_alloc_inode = layout.offset("socket_alloc", &["vfs_inode"])?;
    let socket_alloc_socket = layout.offset("socket_alloc", &["socket"])?;
    let mut offsets = Offsets {
        loaded: 1,
        task_files: layout.offset("task_struct", &["files"])?,
        task_tgid: layout.offset("task_struct", &["tgid"])?,
        task_real_parent: layout.offset("task_struct", &["real_parent"])?,
        files_fdt: layout.offset("files_struct", &["fdt"])?,
        fdtable_max_fds: layout.offset("fdtable", &["max_fds"])?,
        fdtable_fd: layout.offset("fdtable", &["fd"])?,
        file_inode: layout.offset("file", &["f_inode"])?,
        file_private_data: layout.offset("file", &["private_data"])?,
        inode_mode: layout.offset("inode", &["i_mode"])?,
        inode_ino: layout.offset("inode", &["i_ino"])?,
        inode_sb: layout.offset("inode", &["i_sb"])?,
        inode_pipe: layout.offset("inode", &["i_pipe"])?,
        pipe_head: layout.offset("pipe_inode_info", &["head"])?,
        pipe_tail: layout.offset("pipe_inode_info", &["tail"])?,
        pipe_max_usage: layout.offset("pipe_inode_info", &["max_usage"])?,
        sb_magic: layout.offset("super_block", &["s_magic"])?,
        sb_dev: layout.offset("super_block", &["s_dev"])?,
        socket_type: layout.offset("socket", &["type"])?,
        socket_sk: layout.offset("socket", &["sk"])?,
        sock_family: layout.offset("sock", &["__sk_common", "skc_family"])?,
        sock_socket: layout.offset("sock", &["sk_socket"])?,
        unix_peer: layout.offset("unix_sock", &["peer"])?,
        socket_to_inode: socket_alloc_inode.wrapping_sub(socket_alloc_socket),
        sock_daddr: layout.offset("sock", &["__sk_common", "skc_daddr"])?,
        sock_rcv_saddr: layout.offset("sock", &["__sk_common", "skc_rcv_saddr"])?,
        sock_dport: layout.offset("sock", &["__sk_common", "skc_dport"])?,
        sock_num: layout.offset("sock", &["__sk_common", "skc_num"])?,
        // Only in kernels built with IPv6: without them IPv6 TCP is not
        // followed, and everything else is.
        sock_v6_daddr: layout
            .offset("sock", &["__sk_common", "skc_v6_daddr"])
            .unwrap_or(0),
        sock_v6_rcv_saddr: layout
            .offset("sock", &["__sk_common", "skc_v6_rcv_saddr"])
            .unwrap_or(0),
        mmsghdr_size: layout.size("mmsghdr").unwrap_or(0),
        mmsghdr_msg_len: layout.offset("mmsghdr", &["msg_len"]).unwrap_or(0),
        regs_orig_ax: layout.offset("pt_regs", &["orig_ax"])?,
        regs_di: layout.offset("pt_regs", &["di"])?,
        regs_si: layout.offset("pt_regs", &["si"])?,
        regs_dx: layout.offset("pt_regs", &["dx"])?,
        regs_r10: layout.offset("pt_regs", &["r10"])?,
        regs_r8: layout.offset("pt_regs", &["r8"])?,
        user_msghdr_name: layout.offset("user_msghdr", &["msg_name"])?,
        regs_cs: layout.offset("pt_regs", &["cs"])?,
    };
    // The programs read the pipe's ring indices and limit in one 16-byte
    // read from `head`.
    let pipe_words = offsets.pipe_head..offsets.pipe_head + 16;
    for (field, offset) in [
        ("tail", offsets.pipe_tail),
        ("max_usage", offsets.pipe_max_usage),
    ] {
        if !pipe_words.contains(&offset) || offset % 4 != 0 {
            return Err(OffsetError::NoField {
                strukt: "pipe_inode_info".to_owned(),
                field: format!("{field} within 16 bytes of head"),
            });
        }
    }
    if let Ok(field) = std::env::var(CORRUPT_OFFSET_ENV) {
        corrupt(&mut offsets, &field)?;
        log::warn!("{CORRUPT_OFFSET_ENV}={field}: offset deliberately wrong, for testing");
    }
    Ok(offsets)
}

/// Shifts one named offset by 8 bytes (the test hook behind
/// [`CORRUPT_OFFSET_ENV`]).
pub fn corrupt(offsets: &mut Offsets, field: &str) -> Result<(), OffsetError> {
    let slot = match field {
        "task_files" => &mut offsets.task_files,
        "files_fdt" => &mut offsets.files_fdt,
        "fdtable_fd" => &mut offsets.fdtable_fd,
        "file_inode" => &mut offsets.file_inode,
        "inode_mode" => &mut offsets.inode_mode,
        "inode_ino" => &mut offsets.inode_ino,
        "inode_pipe" => &mut offsets.inode_pipe,
        "socket_sk" => &mut offsets.socket_sk,
        "unix_peer" => &mut offsets.unix_peer,
        "sock_family" => &mut offsets.sock_family,
        other => return Err(OffsetError::UnknownCorruption(other.to_owned())),
    };
    *slot += 8;
    Ok(())
}

struct Layout<'a> {
    btf: &'a Btf,
}

impl Layout<'_> {
    /// Byte offset of `path` (member names, outermost first) in `strukt`.
    fn offset(&self, strukt: &str, path: &[&str]) -> Result<u64, OffsetError> {
        let mut current = self.named_struct(strukt)?;
        let mut current_name = strukt.to_owned();
        let mut total = 0u64;
        for (depth, field) in path.iter().enumerate() {
            let (bits, member_type) =
                self.find_member(&current, field)
                    .ok_or_else(|| OffsetError::NoField {
                        strukt: current_name.clone(),
                        field: (*field).to_owned(),
                    })?;
            if bits % 8 != 0 {
                return Err(OffsetError::Bitfield(format!(
                    "{strukt}.{}",
                    path.join(".")
                )));
            }
            total += u64::from(bits / 8);
            if depth + 1 < path.len() {
                current = self
                    .as_struct(member_type)
                    .ok_or_else(|| OffsetError::NoField {
                        strukt: current_name.clone(),
                        field: (*field).to_owned(),
                    })?;
                current_name = (*field).to_owned();
            }
        }
        Ok(total)
    }

    /// `sizeof(struct name)`.
    fn size(&self, strukt: &str) -> Result<u64, OffsetError> {
        Ok(self.named_struct(strukt)?.size() as u64)
    }

    fn named_struct(&self, name: &str) -> Result<btf_rs::Struct, OffsetError> {
        let types = self
            .btf
            .resolve_types_by_name(name)
            .map_err(|_| OffsetError::NoStruct(name.to_owned()))?;
        types
            .into_iter()
            .find_map(|t| match t {
                Type::Struct(s) if !s.members.is_empty() => Some(s),
                _ => None,
            })
            .ok_or_else(|| OffsetError::NoStruct(name.to_owned()))
    }

    /// Finds `name` among the members, descending into anonymous structs and
    /// unions; returns its bit offset from the start of `strukt` and type.
    fn find_member(&self, strukt: &btf_rs::Struct, name: &str) -> Option<(u32, Type)> {
        for member in &strukt.members {
            let member_name = self.btf.resolve_name(member).unwrap_or_default();
            let member_type = self.btf.resolve_chained_type(member).ok()?;
            if member_name == name {
                return Some((member.bit_offset(), member_type));
            }
            if member_name.is_empty()
                && let Some(inner) = self.as_struct(member_type)
                && let Some((bits, found)) = self.find_member(&inner, name)
            {
                return Some((member.bit_offset() + bits, found));
            }
        }
        None
    }

    /// Follows typedefs and qualifiers down to a struct or union.
    fn as_struct(&self, mut ty: Type) -> Option<btf_rs::Struct> {
        for _ in 0..16 {
            match ty {
                Type::Struct(s) | Type::Union(s) => return Some(s),
                Type::Typedef(_) | Type::Const(_) | Type::Volatile(_) | Type::TypeTag(_) => {
                    let next = ty
                        .as_btf_type()
                        .and_then(|t| self.btf.resolve_chained_type(t).ok())?;
                    ty = next;
                }
                _ => return None,
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corrupting_an_offset_moves_exactly_that_field() {
        let mut offsets = Offsets::ZERO;
        corrupt(&mut offsets, "inode_ino").unwrap();
        assert_eq!(offsets.inode_ino, 8);
        assert_eq!(offsets.inode_mode, 0);
        assert!(matches!(
            corrupt(&mut offsets, "nonsense"),
            Err(OffsetError::UnknownCorruption(_))
        ));
    }

    /// Reads the running kernel's BTF: every machine we support has it, and
    /// a kernel without it must fail this test loudly rather than skip.
    #[test]
    fn running_kernel_btf_gives_plausible_offsets() {
        let offsets = read_offsets(Path::new(super::super::preflight::VMLINUX_BTF))
            .expect("reading /sys/kernel/btf/vmlinux");
        assert_eq!(offsets.loaded, 1);
        // skc_family sits in sock_common at the start of struct sock, after
        // the address and port pairs, so it cannot be at offset 0 ...
        assert!(offsets.sock_family > 0 && offsets.sock_family < 64);
        // ... and the addresses come first.
        assert!(offsets.sock_daddr < offsets.sock_family);
        assert_eq!(offsets.sock_rcv_saddr, offsets.sock_daddr + 4);
        // The inode follows the socket inside socket_alloc.
        assert!(offsets.socket_to_inode > 0 && offsets.socket_to_inode < 4096);
        assert!(offsets.task_files > 0 && offsets.task_real_parent > 0);
        // The ring indices follow the mutex and two wait queues.
        assert!(offsets.pipe_head > 0 && offsets.pipe_tail > offsets.pipe_head);
        assert!(offsets.pipe_max_usage > offsets.pipe_tail);
    }
}
