//! The observer against the real kernel: real processes move known numbers
//! of bytes over each kind of channel, and the figures must match exactly.
//! These need root; without BPF they fail (never skip).

use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result, bail};
use resonance::report::InteractionRecord;
use resonance_tests::{observe, serial, spawn_ready, traffic_bin};

fn traffic(args: &[&str]) -> Command {
    let mut command = Command::new(traffic_bin());
    command.args(args);
    command
}

fn wait(mut child: Child, what: &str) -> Result<()> {
    let status = child
        .wait()
        .with_context(|| format!("waiting for {what}"))?;
    if !status.success() {
        bail!("{what} failed: {status}");
    }
    Ok(())
}

fn between<'a>(
    records: &'a [InteractionRecord],
    src: u32,
    dst: u32,
    kind: &str,
) -> Vec<&'a InteractionRecord> {
    records
        .iter()
        .filter(|r| r.src_pid == src && r.dst_pid == Some(dst) && r.kind == kind)
        .collect()
}

fn temp_path(name: &str) -> String {
    format!(
        "{}/resonance-test-{}-{name}",
        std::env::temp_dir().display(),
        std::process::id()
    )
}

#[test]
fn shell_pipeline_head_to_cat_is_one_pipe_of_exactly_ten_million_bytes() {
    let _serial = serial();
    let mut shell_pid = 0;
    let records = observe(|| {
        let child = Command::new("sh")
            .args(["-c", "head -c 10000000 /dev/zero | cat >/dev/null"])
            .spawn()?;
        shell_pid = child.id();
        wait(child, "the shell pipeline")
    });
    let pipes: Vec<_> = records
        .iter()
        .filter(|r| {
            r.src_comm == "head" && r.dst_comm.as_deref() == Some("cat") && r.src_ppid == shell_pid
        })
        .collect();
    assert_eq!(
        pipes.len(),
        1,
        "expected one head->cat interaction, got {pipes:#?}"
    );
    let pipe = pipes[0];
    assert_eq!(pipe.kind, "pipe");
    assert_eq!(pipe.bytes, 10_000_000);
    assert_eq!(pipe.errors, 0);
    assert!(
        pipe.messages >= 10_000_000 / 65_536,
        "messages {}",
        pipe.messages
    );
    assert!(pipe.latency_samples > 0 && pipe.latency_p50_ns.is_some());
    assert!(pipe.first_seen_ns > 0 && pipe.first_seen_ns <= pipe.last_seen_ns);
}

#[test]
fn named_fifo_joins_writer_and_reader() {
    let _serial = serial();
    let fifo = temp_path("fifo");
    let _ = std::fs::remove_file(&fifo);
    let status = Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("running mkfifo");
    assert!(status.success(), "mkfifo failed");
    let (mut writer_pid, mut reader_pid) = (0, 0);
    let records = observe(|| {
        let reader = Command::new("cat")
            .arg(&fifo)
            .stdout(Stdio::null())
            .spawn()?;
        let writer = traffic(&["write-file", &fifo, "3000000"]).spawn()?;
        (writer_pid, reader_pid) = (writer.id(), reader.id());
        wait(writer, "the FIFO writer")?;
        wait(reader, "the FIFO reader")
    });
    let _ = std::fs::remove_file(&fifo);
    let found = between(&records, writer_pid, reader_pid, "fifo");
    assert_eq!(found.len(), 1, "{records:#?}");
    assert_eq!(found[0].bytes, 3_000_000);
}

#[test]
fn unix_stream_counts_each_way_and_shows_the_server_delay_as_turnaround() {
    let _serial = serial();
    let path = temp_path("stream.sock");
    let (mut server_pid, mut client_pid) = (0, 0);
    let records = observe(|| {
        // 20 requests of 100 bytes, 5,000-byte replies, 40 ms server delay.
        let server = spawn_ready(
            traffic(&["unix-server", &path, "20", "100", "5000", "40"]),
            "server",
        )?;
        let client = traffic(&["unix-client", &path, "20", "100", "5000"]).spawn()?;
        (server_pid, client_pid) = (server.id(), client.id());
        wait(client, "client")?;
        wait(server, "server")
    });
    let _ = std::fs::remove_file(&path);
    let requests = between(&records, client_pid, server_pid, "unix_stream");
    let replies = between(&records, server_pid, client_pid, "unix_stream");
    assert_eq!(requests.len(), 1, "{records:#?}");
    assert_eq!(replies.len(), 1, "{records:#?}");
    assert_eq!(requests[0].bytes, 2_000);
    assert_eq!(replies[0].bytes, 100_000);
    let turnaround = requests[0].latency_p50_ns.expect("turnaround measured");
    // 40 ms delay; buckets are within 25 %.
    assert!(
        (30_000_000..=60_000_000).contains(&turnaround),
        "turnaround p50 {turnaround} ns"
    );
    assert!(
        requests[0].latency_samples >= 19,
        "samples {}",
        requests[0].latency_samples
    );
    // Long-lived processes are attributed to their executable and cgroup.
    let traffic = traffic_bin();
    assert_eq!(requests[0].dst_exe.as_deref(), traffic.to_str());
    assert!(
        requests[0]
            .src_cgroup
            .as_deref()
            .is_some_and(|c| c.starts_with('/'))
    );
    // The client answers the server's replies at once.
    let back = replies[0]
        .latency_p50_ns
        .expect("the client's turnaround is measured too");
    assert!(back < turnaround / 4, "reverse turnaround {back} ns");
}

#[test]
fn socketpair_across_fork_is_reported_as_unix_stream_both_ways() {
    let _serial = serial();
    let mut parent_pid = 0;
    let records = observe(|| {
        let child = traffic(&["socketpair-fork", "123456", "654"]).spawn()?;
        parent_pid = child.id();
        wait(child, "socketpair-fork")
    });
    let up: Vec<_> = records
        .iter()
        .filter(|r| r.src_ppid == parent_pid && r.dst_pid == Some(parent_pid))
        .collect();
    let down: Vec<_> = records
        .iter()
        .filter(|r| r.src_pid == parent_pid && r.dst_ppid == Some(parent_pid))
        .collect();
    assert_eq!(up.len(), 1, "{records:#?}");
    assert_eq!(down.len(), 1, "{records:#?}");
    assert_eq!((up[0].kind.as_str(), up[0].bytes), ("unix_stream", 123_456));
    assert_eq!((down[0].kind.as_str(), down[0].bytes), ("unix_stream", 654));
}

#[test]
fn unix_datagrams_are_counted_per_message() {
    let _serial = serial();
    let path = temp_path("dgram.sock");
    let (mut server_pid, mut client_pid) = (0, 0);
    let records = observe(|| {
        let server = spawn_ready(
            traffic(&["dgram-server", &path, "50", "700"]),
            "datagram server",
        )?;
        let client = traffic(&["dgram-client", &path, "50", "700"]).spawn()?;
        (server_pid, client_pid) = (server.id(), client.id());
        wait(client, "datagram client")?;
        wait(server, "datagram server")
    });
    let _ = std::fs::remove_file(&path);
    let found = between(&records, client_pid, server_pid, "unix_dgram");
    assert_eq!(found.len(), 1, "{records:#?}");
    assert_eq!((found[0].bytes, found[0].messages), (35_000, 50));
}

/// A client that never connects, sending `how` (sendto or sendmsg) to
/// `address` (a path, or `@name`), is joined to the server bound there.
fn unconnected_datagrams_join(address: &str, how: &str) {
    let _serial = serial();
    let (mut server_pid, mut client_pid) = (0, 0);
    let records = observe(|| {
        let server = spawn_ready(
            traffic(&["dgram-server", address, "40", "900"]),
            "datagram server",
        )?;
        let client = traffic(&["dgram-send-to", address, "40", "900", how]).spawn()?;
        (server_pid, client_pid) = (server.id(), client.id());
        wait(client, "datagram client")?;
        wait(server, "datagram server")
    });
    if !address.starts_with('@') {
        let _ = std::fs::remove_file(address);
    }
    let found = between(&records, client_pid, server_pid, "unix_dgram");
    assert_eq!(found.len(), 1, "{records:#?}");
    assert_eq!((found[0].bytes, found[0].messages), (36_000, 40));
}

#[test]
fn unconnected_unix_datagrams_by_sendto_join_the_socket_bound_at_the_path() {
    unconnected_datagrams_join(&temp_path("unbound.sock"), "sendto");
}

#[test]
fn unconnected_unix_datagrams_by_sendmsg_join_an_abstract_receiver() {
    let name = format!("@resonance-test-{}", std::process::id());
    unconnected_datagrams_join(&name, "sendmsg");
}

/// `tcp-fork` over `listen`/`connect` addresses: the records of the
/// child → parent and parent → child directions.
fn tcp_fork_records(
    listen: &str,
    connect: &str,
) -> (Vec<InteractionRecord>, Vec<InteractionRecord>) {
    let _serial = serial();
    let mut parent_pid = 0;
    let records = observe(|| {
        let child = traffic(&["tcp-fork", "77777", "4321", listen, connect]).spawn()?;
        parent_pid = child.id();
        wait(child, "tcp-fork")
    });
    let up = records
        .iter()
        .filter(|r| {
            r.src_ppid == parent_pid && r.dst_pid == Some(parent_pid) && r.kind == "tcp_loopback"
        })
        .cloned()
        .collect();
    let down = records
        .iter()
        .filter(|r| {
            r.src_pid == parent_pid && r.dst_ppid == Some(parent_pid) && r.kind == "tcp_loopback"
        })
        .cloned()
        .collect();
    (up, down)
}

fn assert_tcp_fork_bytes(listen: &str, connect: &str) {
    let (up, down) = tcp_fork_records(listen, connect);
    assert_eq!(up.len(), 1, "{listen} <- {connect}: {up:#?}");
    assert_eq!(down.len(), 1, "{listen} <- {connect}: {down:#?}");
    assert_eq!(up[0].bytes, 77_777);
    assert_eq!(down[0].bytes, 4_321);
}

#[test]
fn loopback_tcp_joins_both_ends_by_their_addresses() {
    assert_tcp_fork_bytes("127.0.0.1", "127.0.0.1");
}

#[test]
fn ipv6_loopback_tcp_joins_both_ends_by_their_addresses() {
    assert_tcp_fork_bytes("::1", "::1");
}

/// A server listening on `::` (both IPv6 and IPv4, as nginx or redis are
/// often configured) sees its IPv4 client as `::ffff:127.0.0.1`; the two
/// ends, one IPv6 socket and one IPv4 socket, must still join.
#[test]
fn a_dual_stack_listener_joins_its_ipv4_client() {
    assert_tcp_fork_bytes("::", "127.0.0.1");
}

/// sendmmsg/recvmmsg return messages, not bytes: the bytes are summed
/// from the vector the kernel filled in. 7 batches of 33 datagrams of
/// 1,001 bytes each way must count as 231,231 bytes, exactly.
#[test]
fn sendmmsg_and_recvmmsg_count_every_byte_of_every_message() {
    let _serial = serial();
    let mut parent_pid = 0;
    let records = observe(|| {
        let child = traffic(&["mmsg-fork", "7", "33", "1001"]).spawn()?;
        parent_pid = child.id();
        wait(child, "mmsg-fork")
    });
    let sent: Vec<_> = records
        .iter()
        .filter(|r| {
            r.src_ppid == parent_pid && r.dst_pid == Some(parent_pid) && r.kind == "unix_dgram"
        })
        .collect();
    assert_eq!(sent.len(), 1, "{records:#?}");
    assert_eq!(sent[0].bytes, 7 * 33 * 1001, "{sent:#?}");
    assert!(
        sent[0].messages >= 7 && sent[0].messages <= 7 * 33,
        "one per sendmmsg call that moved some: {sent:#?}"
    );
}

/// Records of a two-process traffic kind: child → parent and parent →
/// child, of `kind`.
fn fork_records(args: &[&str], kind: &str) -> (Vec<InteractionRecord>, Vec<InteractionRecord>) {
    let _serial = serial();
    let mut parent_pid = 0;
    let records = observe(|| {
        let child = traffic(args).spawn()?;
        parent_pid = child.id();
        wait(child, args[0])
    });
    let up = records
        .iter()
        .filter(|r| r.src_ppid == parent_pid && r.dst_pid == Some(parent_pid) && r.kind == kind)
        .cloned()
        .collect();
    let down = records
        .iter()
        .filter(|r| r.src_pid == parent_pid && r.dst_ppid == Some(parent_pid) && r.kind == kind)
        .cloned()
        .collect();
    (up, down)
}

/// splice reads its input pipe and writes its output pipe: the child's
/// bytes reach the parent through A, and the parent's through B.
#[test]
fn splice_between_pipes_counts_both_sides() {
    let (up, down) = fork_records(&["splice-relay", "100000"], "pipe");
    assert_eq!(up.len(), 1, "{up:#?}");
    assert_eq!(down.len(), 1, "{down:#?}");
    assert_eq!(up[0].bytes, 100_000, "child -> parent through A");
    assert_eq!(down[0].bytes, 100_000, "parent -> child through B");
    // The splice the kernel declined (EINVAL) before the real ones.
    assert_eq!((up[0].errors, down[0].errors), (0, 0), "{up:#?} {down:#?}");
}

/// tee copies A into B without consuming A: B's bytes come from the
/// parent; A's are counted once, when the parent reads them.
#[test]
fn tee_counts_its_copy_and_not_the_input_twice() {
    let (up, down) = fork_records(&["tee-relay", "50000"], "pipe");
    assert_eq!(up.len(), 1, "{up:#?}");
    assert_eq!(down.len(), 1, "{down:#?}");
    assert_eq!(up[0].bytes, 50_000, "child -> parent through A, read once");
    assert_eq!(down[0].bytes, 50_000, "parent -> child: the tee into B");
}

/// sendfile from a regular file into a Unix stream socket counts as the
/// parent's send.
#[test]
fn sendfile_into_a_socket_counts_as_a_send() {
    let (_, down) = fork_records(&["sendfile-socket", "300000"], "unix_stream");
    assert_eq!(down.len(), 1, "{down:#?}");
    assert_eq!(down[0].bytes, 300_000);
}

#[test]
fn connect_to_a_missing_unix_path_is_an_error() {
    let _serial = serial();
    let path = temp_path("missing.sock");
    let mut pid = 0;
    let records = observe(|| {
        let child = traffic(&["connect-missing", &path]).spawn()?;
        pid = child.id();
        wait(child, "connect-missing")
    });
    let failed: Vec<_> = records.iter().filter(|r| r.src_pid == pid).collect();
    assert_eq!(failed.len(), 1, "{records:#?}");
    assert_eq!(failed[0].errors, 1);
    assert_eq!(failed[0].dst_pid, None);
    assert_eq!(failed[0].dst_addr.as_deref(), Some(path.as_str()));
    assert_eq!(failed[0].kind, "unix_stream");
}

#[test]
fn a_full_ring_buffer_loses_events_but_not_bytes() {
    let _serial = serial();
    // An idle gap of zero makes every syscall a flow start: far more events
    // than the ring buffer holds while nobody drains it.
    let mut observer =
        resonance::observer::Observer::start(&resonance::observer::ObserverOptions {
            idle_gap: std::time::Duration::ZERO,
            ..Default::default()
        })
        .unwrap_or_else(|e| panic!("the eBPF observer could not start: {e}"));
    let child = traffic(&["pipe-pingpong", "20000"])
        .stdout(Stdio::null())
        .spawn()
        .expect("starting pipe-pingpong");
    let parent_pid = child.id();
    wait(child, "pipe-pingpong").expect("pipe-pingpong");
    let stats = observer.stats();
    assert!(stats.dropped > 0, "expected drops, got {stats:?}");
    let records: Vec<InteractionRecord> = observer
        .interactions()
        .iter()
        .map(InteractionRecord::from)
        .collect();
    let stats = observer.stats();
    assert!(
        stats.events > 1000,
        "draining after the overflow works: {stats:?}"
    );
    let down: Vec<_> = records
        .iter()
        .filter(|r| r.src_pid == parent_pid && r.dst_ppid == Some(parent_pid) && r.kind == "pipe")
        .collect();
    let up: Vec<_> = records
        .iter()
        .filter(|r| r.src_ppid == parent_pid && r.dst_pid == Some(parent_pid) && r.kind == "pipe")
        .collect();
    assert_eq!((down.len(), up.len()), (1, 1), "{records:#?}");
    assert_eq!((down[0].bytes, up[0].bytes), (20_000, 20_000));
}

/// Run as `nobody` from a copy of the binary in a folder anyone may enter:
/// the checkout may lie in a folder only root can (a clone under /root, a
/// `mktemp -d`), where `nobody` could not even start it.
#[test]
fn without_privileges_observe_says_what_is_missing_and_fails() {
    use std::os::unix::{fs::PermissionsExt, process::CommandExt};
    let dir = std::env::temp_dir().join(format!("resonance-nobody-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).expect("creating a folder for the copy");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
        .expect("opening the folder to everyone");
    let binary = dir.join("resonance");
    std::fs::copy(resonance_tests::resonance_bin(), &binary).expect("copying resonance");
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755))
        .expect("making the copy runnable by everyone");
    let output = Command::new(&binary)
        .args(["observe", "--duration", "1s"])
        .uid(65534)
        .gid(65534)
        .output()
        .expect("running resonance as nobody");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("needs root"), "{stderr}");
    assert_eq!(
        stderr
            .lines()
            .filter(|l| l.starts_with("resonance:"))
            .count(),
        1,
        "{stderr}"
    );
}

/// Under systemd stderr is the journal's stream (`JOURNAL_STREAM` names
/// it): log lines then carry the level as a syslog priority and no
/// timestamp of their own; anywhere else they keep env_logger's form. The
/// variable alone is not enough: a child whose stderr was redirected
/// inherits it but writes elsewhere.
#[test]
fn log_lines_suit_the_journal_only_when_stderr_is_the_journal() {
    use std::os::unix::fs::MetadataExt;
    let _serial = serial();
    let dir = std::env::temp_dir().join(format!("resonance-journal-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("creating a folder for stderr");
    let observe = |journal: Option<&str>, path: &std::path::Path| -> String {
        let stderr = std::fs::File::create(path).expect("creating the stderr file");
        let identity = stderr.metadata().expect("stat of the stderr file");
        let mut command = Command::new(resonance_tests::resonance_bin());
        command
            .args(["observe", "--duration", "1s"])
            .env_remove("JOURNAL_STREAM")
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(stderr);
        match journal {
            Some("this") => {
                command.env(
                    "JOURNAL_STREAM",
                    format!("{}:{}", identity.dev(), identity.ino()),
                );
            }
            Some(other) => {
                command.env("JOURNAL_STREAM", other);
            }
            None => {}
        }
        let status = command.status().expect("running resonance observe");
        assert!(status.success(), "observe failed");
        std::fs::read_to_string(path).expect("reading stderr")
    };
    let journal = observe(Some("this"), &dir.join("journal"));
    let attached = journal
        .lines()
        .find(|line| line.contains("hooks attached"))
        .unwrap_or_else(|| panic!("no attach line: {journal}"));
    assert!(
        attached.starts_with("<6>resonance"),
        "an info line with priority 6 and no timestamp: {attached}"
    );
    for (name, journal) in [("no variable", None), ("another stream", Some("1:2"))] {
        let plain = observe(journal, &dir.join("plain"));
        let attached = plain
            .lines()
            .find(|line| line.contains("hooks attached"))
            .unwrap_or_else(|| panic!("{name}: no attach line: {plain}"));
        assert!(
            attached.starts_with('[') && attached.contains("INFO"),
            "{name}: env_logger's own form: {attached}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Eight 4 KiB writes into a pipe of `capacity` bytes whose reader comes
/// late, under `observer`: how many of them it counts as blocked, once the
/// bytes and writes it counted are checked exact.
fn blocked_writes_of_a_burst(observer: &mut resonance::observer::Observer, capacity: &str) -> u64 {
    use resonance::{ChannelKind, Direction};
    let child = traffic(&["pipe-burst", capacity, "32768", "4096"])
        .spawn()
        .expect("starting pipe-burst");
    let writer = child.id();
    wait(child, "pipe-burst").expect("pipe-burst");
    let flows = observer.flows();
    let sends: Vec<_> = flows
        .iter()
        .filter(|f| f.pid == writer && f.dir == Direction::Send && f.kind == ChannelKind::Pipe)
        .collect();
    assert_eq!(sends.len(), 1, "{flows:#?}");
    assert_eq!(sends[0].bytes, 32_768, "{sends:#?}");
    assert_eq!(sends[0].ops, 8, "{sends:#?}");
    sends[0].blocked
}

/// Pipe writes that find the pipe too full: counted when a burst outgrows
/// a small pipe whose reader is late, and never when the pipe holds it.
#[test]
fn writes_into_a_full_pipe_count_as_blocked_and_writes_that_fit_do_not() {
    let _serial = serial();
    let blocked_writes = |capacity: &str| {
        blocked_writes_of_a_burst(&mut resonance_tests::start_observer(), capacity)
    };
    // Two one-page slots: the third 4 KiB write finds none free while the
    // reader sleeps (the classic mode, which looks at entry, counts at most
    // the last six); the exit-only hot path also counts the second, which
    // left the pipe full.
    let small = blocked_writes("8192");
    assert!(
        (1..=7).contains(&small),
        "blocked writes into 8 KiB: {small}"
    );
    // Sixteen slots hold all eight pages.
    assert_eq!(blocked_writes("65536"), 0);
}

/// A process that is gone is counted once and then forgotten: the interval
/// after its exit reports every byte it moved, its flows stay while a
/// writer could still pair with them, then leave the kernel map (room for
/// live ones), and no later interval reports them again.
#[test]
fn a_gone_process_is_counted_once_and_then_forgotten() {
    use resonance::{ChannelKind, Direction};
    let _serial = serial();
    let mut observer = resonance_tests::start_observer();
    let _ = observer.interval();
    let child = traffic(&["pipe-pingpong", "1000"])
        .spawn()
        .expect("starting pipe-pingpong");
    let parent = child.id();
    wait(child, "pipe-pingpong").expect("pipe-pingpong");
    let all = observer.flows();
    let child_of = |pid: u32| all.iter().any(|f| f.pid == pid && f.ppid == parent);
    // The two pipes both processes use (the parent's stdout is no pipe of
    // theirs).
    let shared = |end: u64| {
        all.iter().any(|f| f.end == end && f.pid == parent)
            && all.iter().any(|f| f.end == end && child_of(f.pid))
    };
    let flows: Vec<_> = all
        .iter()
        .filter(|f| f.kind == ChannelKind::Pipe && shared(f.end))
        .cloned()
        .collect();
    let mut sent: Vec<u64> = flows
        .iter()
        .filter(|f| f.dir == Direction::Send)
        .map(|f| f.bytes)
        .collect();
    sent.sort_unstable();
    assert_eq!(sent, [1000, 1000], "{flows:#?}");
    let pids: Vec<u32> = flows.iter().map(|f| f.pid).collect();
    let between_them = |interactions: &[resonance::aggregate::Interaction]| -> Vec<u64> {
        let mut bytes: Vec<u64> = interactions
            .iter()
            .filter(|i| i.kind == ChannelKind::Pipe && pids.contains(&i.src.pid))
            .filter(|i| i.dst.as_ref().is_some_and(|d| pids.contains(&d.pid)))
            .map(|i| i.bytes)
            .collect();
        bytes.sort_unstable();
        bytes
    };
    assert_eq!(between_them(&observer.interval()), [1000, 1000]);
    let kept = observer
        .flows()
        .into_iter()
        .filter(|f| pids.contains(&f.pid))
        .count();
    assert!(
        kept >= 4,
        "forgotten within the reader grace: {kept} flows left"
    );
    std::thread::sleep(std::time::Duration::from_secs(5));
    assert_eq!(between_them(&observer.interval()), Vec::<u64>::new());
    let left: Vec<_> = observer
        .flows()
        .into_iter()
        .filter(|f| pids.contains(&f.pid))
        .collect();
    assert!(left.is_empty(), "still in the map: {left:#?}");
    assert_eq!(between_them(&observer.interval()), Vec::<u64>::new());
}

/// Descriptor numbers that change meaning are followed: a pipe end closed
/// and its number reused by /dev/zero stops counting, pipe B dup2'd onto
/// that number counts as B, and a forked child's inherited copy counts as
/// the child's. On the exit-only hot path this is the descriptor cache's
/// invalidation; a stale entry would count /dev/zero's 12,288 bytes as
/// pipe A's or lose B's.
#[test]
fn reused_descriptor_numbers_count_as_what_they_refer_to_now() {
    use resonance::{ChannelKind, Direction};
    let _serial = serial();
    let mut observer = resonance_tests::start_observer();
    let child = traffic(&["fd-reuse"]).spawn().expect("starting fd-reuse");
    let parent = child.id();
    wait(child, "fd-reuse").expect("fd-reuse");
    let flows: Vec<_> = observer
        .flows()
        .into_iter()
        .filter(|f| f.kind == ChannelKind::Pipe && (f.pid == parent || f.ppid == parent))
        .collect();
    let bytes = |pid_is_parent: bool, dir: Direction| -> Vec<u64> {
        let mut bytes: Vec<u64> = flows
            .iter()
            .filter(|f| (f.pid == parent) == pid_is_parent && f.dir == dir)
            .map(|f| f.bytes)
            .collect();
        bytes.sort_unstable();
        bytes
    };
    // Pipe A: 1,000 each way; pipe B: 777 written, 777 + 333 read.
    assert_eq!(bytes(true, Direction::Send), [777, 1000], "{flows:#?}");
    assert_eq!(bytes(true, Direction::Recv), [1000, 1110], "{flows:#?}");
    assert_eq!(bytes(false, Direction::Send), [333], "{flows:#?}");
    assert_eq!(
        bytes(false, Direction::Recv),
        Vec::<u64>::new(),
        "{flows:#?}"
    );
}

/// Counts the hot path keeps in a descriptor's cache entry survive the
/// descriptor being freed before the agent reads them: by close, by dup2
/// onto it, and by an exec (which voids the whole process's cache).
#[test]
fn counts_of_descriptors_freed_before_the_read_are_kept() {
    use resonance::{ChannelKind, Direction};
    let _serial = serial();
    let mut observer = resonance_tests::start_observer();
    let child = traffic(&["fd-retire"]).spawn().expect("starting fd-retire");
    let pid = child.id();
    wait(child, "fd-retire").expect("fd-retire");
    let flows: Vec<_> = observer
        .flows()
        .into_iter()
        .filter(|f| f.kind == ChannelKind::Pipe && f.pid == pid)
        .collect();
    let bytes = |dir: Direction| -> Vec<(u64, u64)> {
        let mut bytes: Vec<(u64, u64)> = flows
            .iter()
            .filter(|f| f.dir == dir)
            .map(|f| (f.bytes, f.ops))
            .collect();
        bytes.sort_unstable();
        bytes
    };
    // (bytes, syscalls) per pipe: C 10 x 30, D 20 x 20, B 10 x 50, A 10 x 100.
    assert_eq!(
        bytes(Direction::Send),
        [(300, 10), (400, 20), (500, 10), (1000, 10)],
        "{flows:#?}"
    );
    assert_eq!(
        bytes(Direction::Recv),
        [(300, 10), (500, 10), (1000, 10)],
        "{flows:#?}"
    );
}

/// The exit-only modes count in descriptor cache entries wherever the
/// kernel can move those counts (`bpf_for_each_map_elem`, 5.13 and later),
/// and in `FLOWS` alone before that; the classic mode never does. A mover
/// that silently failed to load would leave the hot path a hash lookup
/// slower on every message.
#[test]
fn descriptor_counts_are_kept_in_entries_where_the_kernel_can_move_them() {
    use resonance::probe::ProbeMode;
    let _serial = serial();
    let observer = resonance_tests::start_observer();
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("kernel release");
    let mut numbers = release.trim().split(['.', '-']).map(|n| n.parse::<u32>());
    let version = match (numbers.next(), numbers.next()) {
        (Some(Ok(major)), Some(Ok(minor))) => (major, minor),
        _ => panic!("cannot read the kernel release {release:?}"),
    };
    let expected = observer.mode() != ProbeMode::Tracepoint && version >= (5, 13);
    println!(
        "counts in descriptor entries: {} ({} mode, kernel {})",
        observer.counts_in_entries(),
        observer.mode(),
        release.trim()
    );
    assert_eq!(observer.counts_in_entries(), expected);
}

/// The probes run in the mode `RESONANCE_PROBE_MODE` forces, and otherwise
/// in the exit-only tp_btf mode, which every kernel the suite runs on
/// (5.10 and later) loads: a silent fallback to the classic tracepoints
/// would cost every syscall on the host more.
#[test]
fn the_probes_run_in_the_forced_mode_or_else_tp_btf() {
    let _serial = serial();
    let observer = resonance_tests::start_observer();
    let expected = std::env::var(resonance::probe::PROBE_MODE_ENV)
        .ok()
        .filter(|mode| !mode.is_empty())
        .unwrap_or_else(|| "tp_btf".to_owned());
    println!("probe mode: {}", observer.mode());
    assert_eq!(observer.mode().as_str(), expected);
}

/// Pipe latency against a known wait, many times over (one run in seven
/// used to come out five orders of magnitude off, 470 ms for a 5 us
/// wait): a writer sends 1,000 bytes every 100 ms; a reader already
/// waiting takes each at once, and a reader that looks 30 ms late waits
/// 30 ms. Every run's median must be within the buckets' 25 % (plus the
/// scheduler's jitter) of that wait.
#[test]
fn pipe_latency_is_the_wait_it_measures_in_every_one_of_thirty_runs() {
    use resonance::ChannelKind;
    let _serial = serial();
    let mut bad = Vec::new();
    let mut observer = resonance_tests::start_observer();
    for run in 0..30 {
        let delay_ms = if run % 2 == 0 { 0 } else { 30 };
        let child = traffic(&["pipe-paced", "10", "100", &delay_ms.to_string()])
            .spawn()
            .expect("starting pipe-paced");
        let writer = child.id();
        wait(child, "pipe-paced").expect("pipe-paced");
        let records = observer.interactions();
        let Some(pipe) = records
            .iter()
            .find(|i| i.src.pid == writer && i.kind == ChannelKind::Pipe)
        else {
            bad.push(format!("run {run}: no pipe from the writer"));
            continue;
        };
        let p50 = pipe.latency.quantile(0.5);
        let fine = match (delay_ms, p50) {
            (0, Some(p50)) => p50 < 1_000_000,
            (_, Some(p50)) => (22_500_000..=40_000_000).contains(&p50),
            (_, None) => false,
        };
        if !fine || pipe.bytes != 10_000 {
            bad.push(format!(
                "run {run} (reader {delay_ms} ms late): p50 {p50:?} ns over {} samples, {} bytes",
                pipe.latency.count(),
                pipe.bytes
            ));
        }
    }
    assert!(bad.is_empty(), "{bad:#?}");
}

/// On a pipe that stays full the wait is how long data sits in it (the
/// pipe's 64 KiB at the reader's 4 KiB per 5 ms: about 80 ms), not the age
/// of the busy period (which grows to the whole 1.3 s transfer; the median
/// used to report half of that).
#[test]
fn a_saturated_pipe_reports_how_long_data_sits_not_how_long_it_has_been_busy() {
    use resonance::ChannelKind;
    let _serial = serial();
    let mut observer = resonance_tests::start_observer();
    let child = traffic(&["pipe-saturated", "1048576", "4096", "5"])
        .spawn()
        .expect("starting pipe-saturated");
    let writer = child.id();
    wait(child, "pipe-saturated").expect("pipe-saturated");
    let records = observer.interactions();
    let pipe = records
        .iter()
        .find(|i| i.src.pid == writer && i.kind == ChannelKind::Pipe)
        .expect("the writer's pipe");
    assert_eq!(pipe.bytes, 1_048_576);
    let p50 = pipe.latency.quantile(0.5).expect("a median wait");
    let p99 = pipe.latency.quantile(0.99).expect("a p99 wait");
    assert!(
        (50_000_000..=130_000_000).contains(&p50),
        "p50 {p50} ns over {} samples",
        pipe.latency.count()
    );
    assert!(p99 < 250_000_000, "p99 {p99} ns");
}

/// Latency switched off (`measure_latency = false`): every byte is still
/// counted and a full pipe still seen, and no wait is reported at all, not
/// even for a pipe whose reader comes 30 ms late or a server that answers
/// after 10 ms. A switch that broke the counts, or left a made-up latency
/// behind, fails here.
#[test]
fn without_latency_every_byte_is_counted_and_no_wait_is_reported() {
    use resonance::{ChannelKind, observer::ObserverOptions};
    let _serial = serial();
    let mut observer = resonance_tests::start_observer_with(&ObserverOptions {
        latency: false,
        ..ObserverOptions::default()
    });

    let blocked = blocked_writes_of_a_burst(&mut observer, "8192");
    assert!(
        (1..=7).contains(&blocked),
        "blocked writes into 8 KiB: {blocked}"
    );

    let path = temp_path("no-latency.sock");
    let server = spawn_ready(
        traffic(&["unix-server", &path, "5", "100", "5000", "10"]),
        "server",
    )
    .expect("starting the server");
    let client = traffic(&["unix-client", &path, "5", "100", "5000"])
        .spawn()
        .expect("starting the client");
    let (server_pid, client_pid) = (server.id(), client.id());
    let paced = traffic(&["pipe-paced", "10", "100", "30"])
        .spawn()
        .expect("starting pipe-paced");
    let pipe_writer = paced.id();
    wait(client, "client").expect("client");
    wait(server, "server").expect("server");
    wait(paced, "pipe-paced").expect("pipe-paced");
    let _ = std::fs::remove_file(&path);
    let interactions = observer.interactions();
    let pipe = interactions
        .iter()
        .find(|i| i.src.pid == pipe_writer && i.kind == ChannelKind::Pipe)
        .expect("the paced writer's pipe");
    let request = interactions
        .iter()
        .find(|i| {
            i.src.pid == client_pid
                && i.dst.as_ref().is_some_and(|d| d.pid == server_pid)
                && i.kind == ChannelKind::UnixStream
        })
        .expect("the client's requests");
    assert_eq!((pipe.bytes, request.bytes), (10_000, 500));
    assert_eq!(
        (pipe.latency.count(), request.latency.count()),
        (0, 0),
        "pipe {:?}, requests {:?}",
        pipe.latency.quantile(0.5),
        request.latency.quantile(0.5)
    );
}
