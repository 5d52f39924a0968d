//! Loads the embedded object with offsets and settings, attaches every
//! program, and hands out the maps.

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
    programs::TracePoint,
};
use resonance_common::{EndState, FlowKey, FlowStats, Offsets, ProbeConfig, names};

use super::{ProbeError, preflight::VMLINUX_BTF};

/// Which program goes on which tracepoints: (program, category, names).
pub const TRACEPOINTS: &[(&str, &str, &[&str])] = &[
    (
        "io_send_enter",
        "syscalls",
        &[
            "sys_enter_write",
            "sys_enter_writev",
            "sys_enter_sendto",
            "sys_enter_sendmsg",
        ],
    ),
    (
        "io_recv_enter",
        "syscalls",
        &[
            "sys_enter_read",
            "sys_enter_readv",
            "sys_enter_recvfrom",
            "sys_enter_recvmsg",
        ],
    ),
    (
        "io_exit",
        "syscalls",
        &[
            "sys_exit_write",
            "sys_exit_writev",
            "sys_exit_sendto",
            "sys_exit_sendmsg",
            "sys_exit_read",
            "sys_exit_readv",
            "sys_exit_recvfrom",
            "sys_exit_recvmsg",
        ],
    ),
    (
        "pipe_enter",
        "syscalls",
        &["sys_enter_pipe", "sys_enter_pipe2"],
    ),
    (
        "pipe_exit",
        "syscalls",
        &["sys_exit_pipe", "sys_exit_pipe2"],
    ),
    ("socketpair_enter", "syscalls", &["sys_enter_socketpair"]),
    ("socketpair_exit", "syscalls", &["sys_exit_socketpair"]),
    ("socket_exit", "syscalls", &["sys_exit_socket"]),
    ("connect_enter", "syscalls", &["sys_enter_connect"]),
    ("connect_exit", "syscalls", &["sys_exit_connect"]),
    (
        "accept_exit",
        "syscalls",
        &["sys_exit_accept", "sys_exit_accept4"],
    ),
    ("close_enter", "syscalls", &["sys_enter_close"]),
    ("process_exit", "sched", &["sched_process_exit"]),
];

/// One tracepoint the agent attached to.
#[derive(Clone, Debug)]
pub struct AttachStatus {
    /// Program name.
    pub program: &'static str,
    /// `category:name` of the tracepoint.
    pub tracepoint: String,
}

/// The loaded programs and the maps the agent reads. Dropping it detaches
/// every program: the links live in `ebpf`.
pub struct Probes {
    /// Keeps programs and links alive.
    _ebpf: Ebpf,
    /// Per-flow counters.
    pub flows: HashMap<MapData, FlowKey, FlowStats>,
    /// Per-end latency state.
    pub ends: HashMap<MapData, u64, EndState>,
    /// Discrete happenings.
    pub events: RingBuf<MapData>,
    /// Ring-buffer reservations that failed, per CPU.
    pub event_drops: PerCpuArray<MapData, u64>,
    /// What got attached where.
    pub attached: Vec<AttachStatus>,
    /// Log records the programs write with aya-log (rare: ring buffer full,
    /// in-flight table full); `None` if the object has no log map.
    pub logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
}

/// Which programs go on the tracepoints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProbeSet {
    /// The observer.
    #[default]
    Observer,
    /// An empty program on every tracepoint: what the hooks alone cost
    /// (for benchmarks).
    HookFloor,
}

impl Probes {
    /// Loads the object with `offsets` and `config` and attaches everything.
    /// On any failure nothing stays attached: the partly built `Ebpf` is
    /// dropped, which closes every link.
    pub fn load(offsets: &Offsets, config: &ProbeConfig) -> Result<Self, ProbeError> {
        Self::load_set(offsets, config, ProbeSet::Observer)
    }

    /// [`Probes::load`] with a choice of programs.
    pub fn load_set(
        offsets: &Offsets,
        config: &ProbeConfig,
        set: ProbeSet,
    ) -> Result<Self, ProbeError> {
        let btf = aya::Btf::parse_file(VMLINUX_BTF, aya::Endianness::default()).ok();
        let mut ebpf = EbpfLoader::new()
            .btf(btf.as_ref())
            .override_global(names::OFFSETS, offsets, true)
            .override_global(names::CONFIG, config, true)
            .load(aya::include_bytes_aligned!(concat!(
                env!("OUT_DIR"),
                "/resonance"
            )))
            .map_err(|e| ProbeError::Load(Box::new(e)))?;
        let mut attached = Vec::new();
        let mut loaded: Vec<&str> = Vec::new();
        for &(program, category, tracepoints) in TRACEPOINTS {
            let program = match set {
                ProbeSet::Observer => program,
                ProbeSet::HookFloor => "hook_floor",
            };
            let tracepoint: &mut TracePoint = ebpf
                .program_mut(program)
                .ok_or(ProbeError::Missing(program))?
                .try_into()
                .map_err(|source| ProbeError::Attach {
                    program,
                    category,
                    name: tracepoints[0],
                    source: Box::new(source),
                })?;
            if !loaded.contains(&program) {
                tracepoint.load().map_err(|source| ProbeError::Attach {
                    program,
                    category,
                    name: tracepoints[0],
                    source: Box::new(source),
                })?;
                loaded.push(program);
            }
            for &name in tracepoints {
                tracepoint
                    .attach(category, name)
                    .map_err(|source| ProbeError::Attach {
                        program,
                        category,
                        name,
                        source: Box::new(source),
                    })?;
                attached.push(AttachStatus {
                    program,
                    tracepoint: format!("{category}:{name}"),
                });
            }
        }
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(logger) => Some(logger),
            Err(error) => {
                log::warn!("kernel-side log messages will not be shown: {error}");
                None
            }
        };
        let flows = take_map(&mut ebpf, names::FLOWS)?;
        let ends = take_map(&mut ebpf, names::ENDS)?;
        let events = take_map(&mut ebpf, names::EVENTS)?;
        let event_drops = take_map(&mut ebpf, names::EVENT_DROPS)?;
        Ok(Self {
            _ebpf: ebpf,
            flows,
            ends,
            events,
            event_drops,
            attached,
            logger,
        })
    }
}

fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, ProbeError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(ProbeError::Missing(name))?;
    T::try_from(map).map_err(|source| ProbeError::Map {
        name,
        source: Box::new(source),
    })
}
