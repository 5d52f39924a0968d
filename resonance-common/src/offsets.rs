//! Kernel struct field offsets and probe settings, passed in as globals.
//!
//! aya-ebpf has no CO-RE, so the agent reads these from the running kernel's
//! BTF at load time. A program that finds `loaded == 0` does nothing: better
//! blind than reading the wrong field.

/// Byte offsets of the kernel fields the fd walk reads.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offsets {
    /// 1 once the agent filled this in.
    pub loaded: u64,
    /// `task_struct.files`
    pub task_files: u64,
    /// `task_struct.tgid`
    pub task_tgid: u64,
    /// `task_struct.real_parent`
    pub task_real_parent: u64,
    /// `files_struct.fdt`
    pub files_fdt: u64,
    /// `fdtable.max_fds`
    pub fdtable_max_fds: u64,
    /// `fdtable.fd`
    pub fdtable_fd: u64,
    /// `file.f_inode`
    pub file_inode: u64,
    /// `file.private_data`
    pub file_private_data: u64,
    /// `inode.i_mode`
    pub inode_mode: u64,
    /// `inode.i_ino`
    pub inode_ino: u64,
    /// `inode.i_sb`
    pub inode_sb: u64,
    /// `inode.i_pipe`
    pub inode_pipe: u64,
    /// `pipe_inode_info.head`
    pub pipe_head: u64,
    /// `pipe_inode_info.tail`
    pub pipe_tail: u64,
    /// `pipe_inode_info.max_usage`
    pub pipe_max_usage: u64,
    /// `super_block.s_magic`
    pub sb_magic: u64,
    /// `super_block.s_dev`
    pub sb_dev: u64,
    /// `socket.type`
    pub socket_type: u64,
    /// `socket.sk`
    pub socket_sk: u64,
    /// `sock.__sk_common.skc_family`
    pub sock_family: u64,
    /// `sock.sk_socket`
    pub sock_socket: u64,
    /// `unix_sock.peer`
    pub unix_peer: u64,
    /// `socket_alloc.vfs_inode - socket_alloc.socket`: from a `struct socket`
    /// to its inode (the kernel's `SOCK_INODE`).
    pub socket_to_inode: u64,
    /// `sock.__sk_common.skc_daddr`
    pub sock_daddr: u64,
    /// `sock.__sk_common.skc_rcv_saddr`
    pub sock_rcv_saddr: u64,
    /// `sock.__sk_common.skc_dport`
    pub sock_dport: u64,
    /// `sock.__sk_common.skc_num`
    pub sock_num: u64,
    /// `sock.__sk_common.skc_v6_daddr` (an `in6_addr`); 0 when the kernel
    /// is built without IPv6 (never a real offset: `skc_daddr` is at 0).
    pub sock_v6_daddr: u64,
    /// `sock.__sk_common.skc_v6_rcv_saddr`; 0 likewise.
    pub sock_v6_rcv_saddr: u64,
    /// `sizeof(struct mmsghdr)`: the stride of sendmmsg/recvmmsg's vector;
    /// 0 when the kernel's BTF lacks the struct (then they are not counted).
    pub mmsghdr_size: u64,
    /// `mmsghdr.msg_len`: the bytes one message of the vector moved.
    pub mmsghdr_msg_len: u64,
    /// `pt_regs.orig_ax`: the syscall number, read by the raw `sys_exit`
    /// programs.
    pub regs_orig_ax: u64,
    /// `pt_regs.di`: a syscall's first argument (x86_64 ABI).
    pub regs_di: u64,
    /// `pt_regs.si`: the second argument.
    pub regs_si: u64,
    /// `pt_regs.dx`: the third argument.
    pub regs_dx: u64,
    /// `pt_regs.r10`: the fourth argument.
    pub regs_r10: u64,
    /// `pt_regs.r8`: the fifth argument (sendto's address).
    pub regs_r8: u64,
    /// `user_msghdr.msg_name`: sendmsg's address.
    pub user_msghdr_name: u64,
    /// `pt_regs.cs`: tells a 64-bit syscall from a 32-bit (ia32) one,
    /// whose numbers mean other syscalls.
    pub regs_cs: u64,
}

impl Offsets {
    /// All zero, `loaded == 0`: what the programs see until the agent sets it.
    pub const ZERO: Self = Self {
        loaded: 0,
        task_files: 0,
        task_tgid: 0,
        task_real_parent: 0,
        files_fdt: 0,
        fdtable_max_fds: 0,
        fdtable_fd: 0,
        file_inode: 0,
        file_private_data: 0,
        inode_mode: 0,
        inode_ino: 0,
        inode_sb: 0,
        inode_pipe: 0,
        pipe_head: 0,
        pipe_tail: 0,
        pipe_max_usage: 0,
        sb_magic: 0,
        sb_dev: 0,
        socket_type: 0,
        socket_sk: 0,
        sock_family: 0,
        sock_socket: 0,
        unix_peer: 0,
        socket_to_inode: 0,
        sock_daddr: 0,
        sock_rcv_saddr: 0,
        sock_dport: 0,
        sock_num: 0,
        sock_v6_daddr: 0,
        sock_v6_rcv_saddr: 0,
        mmsghdr_size: 0,
        mmsghdr_msg_len: 0,
        regs_orig_ax: 0,
        regs_di: 0,
        regs_si: 0,
        regs_dx: 0,
        regs_r10: 0,
        regs_r8: 0,
        user_msghdr_name: 0,
        regs_cs: 0,
    };
}

/// Settings the agent passes to the programs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeConfig {
    /// The agent's own tgid: its syscalls are not observed.
    pub agent_tgid: u32,
    /// 1: the probes time how long data waits in a pipe and how long a
    /// socket's request waits for its answer (`EndState`); 0: they leave
    /// that out, which spares every followed message its end lookup.
    pub latency: u32,
    /// A flow silent for this long starts anew (emits `FlowStarted`).
    pub idle_gap_ns: u64,
    /// The running kernel's page size: the size of one pipe buffer slot.
    pub page_size: u64,
}

impl ProbeConfig {
    /// What the programs see until the agent sets it.
    pub const ZERO: Self = Self {
        agent_tgid: 0,
        latency: 0,
        idle_gap_ns: 0,
        page_size: 0,
    };
}
