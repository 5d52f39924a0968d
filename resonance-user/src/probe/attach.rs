//! Loads the embedded object with offsets and settings, attaches every
//! program, and hands out the maps.

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapData, PerCpuArray, ProgramArray, RingBuf},
    programs::{BtfTracePoint, RawTracePoint, TracePoint, trace_point::TracePointLinkId},
};
use resonance_common::{EndState, ExitPath, FlowKey, FlowStats, Offsets, ProbeConfig, names};

use super::{FdCountMover, MoveError, MoveReport, ProbeError, preflight::VMLINUX_BTF, refused};

/// The classic mode: which program goes on which tracepoints (program,
/// category, names).
pub const TRACEPOINTS: &[(&str, &str, &[&str])] = &[
    (
        "io_send_enter",
        "syscalls",
        &["sys_enter_write", "sys_enter_writev"],
    ),
    ("io_sendto_enter", "syscalls", &["sys_enter_sendto"]),
    ("io_sendmsg_enter", "syscalls", &["sys_enter_sendmsg"]),
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
            "sys_exit_sendmmsg",
            "sys_exit_recvmmsg",
        ],
    ),
    ("io_send_mmsg_enter", "syscalls", &["sys_enter_sendmmsg"]),
    ("splice_enter", "syscalls", &["sys_enter_splice"]),
    ("tee_enter", "syscalls", &["sys_enter_tee"]),
    ("sendfile_enter", "syscalls", &["sys_enter_sendfile64"]),
    (
        "move_exit",
        "syscalls",
        &["sys_exit_splice", "sys_exit_tee", "sys_exit_sendfile64"],
    ),
    ("io_recv_mmsg_enter", "syscalls", &["sys_enter_recvmmsg"]),
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
    (
        "connect_exit",
        "syscalls",
        &["sys_exit_connect", "sys_exit_bind"],
    ),
    ("bind_enter", "syscalls", &["sys_enter_bind"]),
    (
        "accept_exit",
        "syscalls",
        &["sys_exit_accept", "sys_exit_accept4"],
    ),
    ("close_enter", "syscalls", &["sys_enter_close"]),
    ("process_exit", "sched", &["sched_process_exit"]),
];

/// Hooks the exit-only modes attach besides `sys_exit`: the process-exit
/// tracepoint (not a syscall one, so it adds nothing to other syscalls).
const EXIT_ONLY_TRACEPOINTS: &[(&str, &str, &[&str])] =
    &[("process_exit", "sched", &["sched_process_exit"])];

/// How the programs are hooked into the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProbeMode {
    /// One `tp_btf/sys_exit` program for every syscall (the default): the
    /// cheapest hook, registers read with plain loads.
    TpBtf,
    /// The same program as `raw_tp/sys_exit`, registers read through a
    /// helper: where tp_btf is refused.
    RawTp,
    /// The classic per-syscall tracepoints (`syscalls:sys_enter_*` and
    /// `sys_exit_*`): the fallback that loads everywhere, and the only mode
    /// that times syscalls and judges full pipes at entry.
    Tracepoint,
}

/// Environment variable that forces a mode (`tp_btf`, `raw_tp`,
/// `tracepoint`), as `--probe-mode` does.
pub const PROBE_MODE_ENV: &str = "RESONANCE_PROBE_MODE";

impl ProbeMode {
    /// Tried in this order when no mode is forced.
    pub const PREFERENCE: [Self; 3] = [Self::TpBtf, Self::RawTp, Self::Tracepoint];

    /// The name used in flags, logs and metric labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::TpBtf => "tp_btf",
            Self::RawTp => "raw_tp",
            Self::Tracepoint => "tracepoint",
        }
    }

    /// The mode forced by [`PROBE_MODE_ENV`], if set.
    pub fn from_env() -> Result<Option<Self>, ProbeError> {
        match std::env::var(PROBE_MODE_ENV) {
            Ok(value) if !value.is_empty() => value.parse().map(Some),
            _ => Ok(None),
        }
    }
}

impl std::fmt::Display for ProbeMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ProbeMode {
    type Err = ProbeError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Self::PREFERENCE
            .into_iter()
            .find(|mode| mode.as_str() == value)
            .ok_or_else(|| ProbeError::UnknownMode(value.to_owned()))
    }
}

/// One hook the agent attached to.
#[derive(Clone, Debug)]
pub struct AttachStatus {
    /// Program name.
    pub program: &'static str,
    /// `category:name` of a tracepoint, or `tp_btf:sys_exit` /
    /// `raw_tp:sys_exit`.
    pub tracepoint: String,
    /// The mode it belongs to.
    pub mode: ProbeMode,
}

/// The loaded programs and the maps the agent reads. Dropping it detaches
/// every program: the links live in `ebpf`.
pub struct Probes {
    /// Keeps programs and links alive.
    ebpf: Ebpf,
    /// Per-flow counters.
    pub flows: HashMap<MapData, FlowKey, FlowStats>,
    /// Per-end latency state.
    pub ends: HashMap<MapData, u64, EndState>,
    /// Discrete happenings.
    pub events: RingBuf<MapData>,
    /// Ring-buffer reservations that failed, per CPU.
    pub event_drops: PerCpuArray<MapData, u64>,
    /// Descriptor walks the exit-only hot path made on cache misses.
    pub fd_walks: PerCpuArray<MapData, u64>,
    /// Moves the counts kept in descriptor entries into `flows`; `None`
    /// in the classic mode, or where the mover does not load (the hot
    /// path then counts in `flows` directly).
    fd_counts: Option<FdCountMover>,
    /// The mode the programs run in.
    pub mode: ProbeMode,
    /// What got attached where.
    pub attached: Vec<AttachStatus>,
    /// Log records the programs write with aya-log (rare: ring buffer full,
    /// in-flight table full); `None` if the object has no log map.
    pub logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
}

/// Which programs go on the hooks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProbeSet {
    /// The observer.
    #[default]
    Observer,
    /// An empty program on every hook: what the hooks alone cost
    /// (for benchmarks).
    HookFloor,
}

impl Probes {
    /// Loads the object with `offsets` and `config` and attaches everything
    /// in the best mode this kernel loads.
    pub fn load(offsets: &Offsets, config: &ProbeConfig) -> Result<Self, ProbeError> {
        Self::load_set(offsets, config, ProbeSet::Observer, None)
    }

    /// [`Probes::load`] with a choice of programs, and of mode: `None` tries
    /// [`ProbeMode::PREFERENCE`] in order, logging why a mode was passed
    /// over; a forced mode that fails is an error. On any failure nothing
    /// stays attached: the partly built `Ebpf` is dropped, which closes
    /// every link.
    pub fn load_set(
        offsets: &Offsets,
        config: &ProbeConfig,
        set: ProbeSet,
        mode: Option<ProbeMode>,
    ) -> Result<Self, ProbeError> {
        if let Err(error) = crate::sys::raise_memlock_limit() {
            // Only kernels before 5.11 need it; there the load fails and
            // says so.
            log::debug!("could not lift RLIMIT_MEMLOCK: {error}");
        }
        let btf = aya::Btf::parse_file(VMLINUX_BTF, aya::Endianness::default()).ok();
        let object: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/resonance"));
        let digest = refused::digest(&[
            object,
            // Not the agent's pid, which differs in every process.
            format!(
                "{offsets:?} {} {} {set:?}",
                config.idle_gap_ns, config.page_size
            )
            .as_bytes(),
        ]);
        let mut ebpf = EbpfLoader::new()
            .btf(btf.as_ref())
            .override_global(names::OFFSETS, offsets, true)
            .override_global(names::CONFIG, config, true)
            .load(object)
            .map_err(|e| ProbeError::Load(Box::new(e)))?;
        let candidates: &[ProbeMode] = match &mode {
            Some(forced) => std::slice::from_ref(forced),
            None => &ProbeMode::PREFERENCE,
        };
        let mut attached = None;
        for (index, &candidate) in candidates.iter().enumerate() {
            let last = index + 1 == candidates.len();
            let attempt = refused::Attempt::new(candidate, digest);
            let outcome = match attempt.refused_before() {
                Some(file) => Err(ProbeError::RefusedBefore {
                    mode: candidate,
                    file,
                }),
                None => attach_mode(&mut ebpf, btf.as_ref(), candidate, set),
            };
            if outcome.as_ref().err().is_some_and(too_complex) {
                attempt.note_refused();
            }
            match outcome {
                Ok(list) => {
                    attached = Some((candidate, list));
                    break;
                }
                Err(error) if !last => {
                    log::warn!(
                        "{candidate} probes do not load here ({error}); trying the next mode"
                    );
                }
                Err(error) => return Err(error),
            }
        }
        let Some((mode, attached)) = attached else {
            return Err(ProbeError::Missing("a probe mode"));
        };
        log::info!("probes attached in {mode} mode ({} hooks)", attached.len());
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(logger) => Some(logger),
            Err(error) => {
                log::warn!("kernel-side log messages will not be shown: {error}");
                None
            }
        };
        let fd_counts = if mode != ProbeMode::Tracepoint && set == ProbeSet::Observer {
            match FdCountMover::start(&mut ebpf) {
                Ok(mover) => {
                    if let Some(program) = ebpf.program(names::MOVE_FD_COUNTS) {
                        log_verified(program.info().ok(), names::MOVE_FD_COUNTS);
                    }
                    log::info!("followed syscalls count in their descriptor's cache entry");
                    Some(mover)
                }
                Err(error) => {
                    log::warn!(
                        "every followed syscall will count in the flow map, which costs \
                         a hash lookup more: {error}"
                    );
                    None
                }
            }
        } else {
            None
        };
        let flows = take_map(&mut ebpf, names::FLOWS)?;
        let ends = take_map(&mut ebpf, names::ENDS)?;
        let events = take_map(&mut ebpf, names::EVENTS)?;
        let event_drops = take_map(&mut ebpf, names::EVENT_DROPS)?;
        let fd_walks = take_map(&mut ebpf, names::FD_WALKS)?;
        Ok(Self {
            ebpf,
            flows,
            ends,
            events,
            event_drops,
            fd_walks,
            fd_counts,
            mode,
            attached,
            logger,
        })
    }
}

impl Probes {
    /// Moves the counts kept in descriptor entries into `flows`; `None`
    /// where they are not kept there. A failed move switches counting in
    /// entries off, so that nothing more waits where the agent cannot
    /// reach it; what it left is taken by the next move that works.
    pub fn move_fd_counts(&mut self) -> Option<Result<MoveReport, MoveError>> {
        let mover = self.fd_counts.as_mut()?;
        let result = FdCountMover::run(&self.ebpf);
        if result.is_err() {
            mover.switch_off();
        }
        Some(result)
    }

    /// Whether the hot path counts in descriptor entries.
    pub fn counts_in_entries(&self) -> bool {
        self.fd_counts.as_ref().is_some_and(FdCountMover::is_on)
    }
}

/// Attaches the programs of one mode. A failure leaves nothing of this
/// mode attached: the exit-only modes attach their one `sys_exit` program
/// first, and the classic mode's partial links are detached here.
fn attach_mode(
    ebpf: &mut Ebpf,
    btf: Option<&aya::Btf>,
    mode: ProbeMode,
    set: ProbeSet,
) -> Result<Vec<AttachStatus>, ProbeError> {
    let floor = set == ProbeSet::HookFloor;
    let mut attached = Vec::new();
    let tracepoints = match mode {
        ProbeMode::TpBtf => {
            let program = if floor {
                "hook_floor_btf"
            } else {
                "sys_exit_btf"
            };
            let btf = btf.ok_or(ProbeError::Missing("kernel BTF for tp_btf"))?;
            if !floor {
                for path in ExitPath::ALL {
                    let name = path.btf_program();
                    let hand_off: &mut BtfTracePoint = program_of(ebpf, name)?;
                    hand_off
                        .load("sys_exit", btf)
                        .map_err(|source| attach_error(name, "tp_btf", "sys_exit", source))?;
                }
                fill_exit_paths(ebpf, ExitPath::btf_program)?;
            }
            let hook: &mut BtfTracePoint = program_of(ebpf, program)?;
            let error = |source| attach_error(program, "tp_btf", "sys_exit", source);
            hook.load("sys_exit", btf).map_err(error)?;
            log_verified(hook.info().ok(), program);
            hook.attach().map_err(error)?;
            attached.push(AttachStatus {
                program,
                tracepoint: "tp_btf:sys_exit".to_owned(),
                mode,
            });
            EXIT_ONLY_TRACEPOINTS
        }
        ProbeMode::RawTp => {
            let program = if floor {
                "hook_floor_raw"
            } else {
                "sys_exit_raw"
            };
            if !floor {
                for path in ExitPath::ALL {
                    let name = path.raw_program();
                    let hand_off: &mut RawTracePoint = program_of(ebpf, name)?;
                    hand_off
                        .load()
                        .map_err(|source| attach_error(name, "raw_tp", "sys_exit", source))?;
                }
                fill_exit_paths(ebpf, ExitPath::raw_program)?;
            }
            let hook: &mut RawTracePoint = program_of(ebpf, program)?;
            let error = |source| attach_error(program, "raw_tp", "sys_exit", source);
            hook.load().map_err(error)?;
            log_verified(hook.info().ok(), program);
            hook.attach("sys_exit").map_err(error)?;
            attached.push(AttachStatus {
                program,
                tracepoint: "raw_tp:sys_exit".to_owned(),
                mode,
            });
            EXIT_ONLY_TRACEPOINTS
        }
        ProbeMode::Tracepoint => TRACEPOINTS,
    };
    let mut links = Vec::new();
    let result = attach_tracepoints(ebpf, tracepoints, mode, floor, &mut attached, &mut links);
    if result.is_err() {
        for (program, link) in links {
            if let Ok(tracepoint) = program_of::<TracePoint>(ebpf, program) {
                let _ = tracepoint.detach(link);
            }
        }
    }
    result.map(|()| attached)
}

/// Puts each [`ExitPath`]'s program, already loaded, into its slot of the
/// program array the hot path tail-calls through. The array stays in
/// `ebpf`: the kernel empties a program array once user space holds it no
/// more.
fn fill_exit_paths(
    ebpf: &mut Ebpf,
    program: fn(ExitPath) -> &'static str,
) -> Result<(), ProbeError> {
    let mut fds = Vec::with_capacity(ExitPath::ALL.len());
    for path in ExitPath::ALL {
        let name = program(path);
        let loaded = ebpf.program(name).ok_or(ProbeError::Missing(name))?;
        log_verified(loaded.info().ok(), name);
        let fd = loaded
            .fd()
            .map_err(|source| attach_error(name, "program", name, source))?
            .try_clone()
            .map_err(|source| attach_error(name, "program", name, source.into()))?;
        fds.push((path, fd));
    }
    let map = ebpf
        .map_mut(names::EXIT_PATHS)
        .ok_or(ProbeError::Missing(names::EXIT_PATHS))?;
    let mut slots = ProgramArray::try_from(map).map_err(|source| ProbeError::Map {
        name: names::EXIT_PATHS,
        source: Box::new(source),
    })?;
    for (path, fd) in &fds {
        slots
            .set(*path as u32, fd, 0)
            .map_err(|source| ProbeError::Map {
                name: names::EXIT_PATHS,
                source: Box::new(source),
            })?;
    }
    Ok(())
}

/// Logs how many instructions the verifier walked for `program`: how close
/// it is to the million older kernels allow (5.16 and later report it).
fn log_verified(info: Option<aya::programs::ProgramInfo>, program: &str) {
    if let Some(count) = info.and_then(|info| info.verified_instruction_count()) {
        log::debug!("{program}: {count} instructions verified");
    }
}

fn attach_tracepoints(
    ebpf: &mut Ebpf,
    tracepoints: &[(&'static str, &'static str, &'static [&'static str])],
    mode: ProbeMode,
    floor: bool,
    attached: &mut Vec<AttachStatus>,
    links: &mut Vec<(&'static str, TracePointLinkId)>,
) -> Result<(), ProbeError> {
    for &(program, category, names) in tracepoints {
        let program = if floor { "hook_floor" } else { program };
        let tracepoint: &mut TracePoint = program_of(ebpf, program)?;
        if tracepoint.fd().is_err() {
            tracepoint
                .load()
                .map_err(|source| attach_error(program, category, names[0], source))?;
        }
        for &name in names {
            let link = tracepoint
                .attach(category, name)
                .map_err(|source| attach_error(program, category, name, source))?;
            links.push((program, link));
            attached.push(AttachStatus {
                program,
                tracepoint: format!("{category}:{name}"),
                mode,
            });
        }
    }
    Ok(())
}

fn program_of<'a, T>(ebpf: &'a mut Ebpf, program: &'static str) -> Result<&'a mut T, ProbeError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(program)
        .ok_or(ProbeError::Missing(program))?
        .try_into()
        .map_err(|source| attach_error(program, "program", program, source))
}

fn attach_error(
    program: &'static str,
    category: &'static str,
    name: &'static str,
    source: aya::programs::ProgramError,
) -> ProbeError {
    ProbeError::Attach {
        program,
        category,
        name,
        source: Box::new(source),
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

/// Whether the verifier refused a program as too complex for it (E2BIG:
/// it walked its limit of instructions), which it will do again.
fn too_complex(error: &ProbeError) -> bool {
    match error {
        ProbeError::Attach { source, .. } => matches!(
            &**source,
            aya::programs::ProgramError::LoadError { io_error, .. }
                if io_error.raw_os_error() == Some(libc::E2BIG)
        ),
        _ => false,
    }
}
