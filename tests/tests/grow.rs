//! Pipes of unmodified programs grown in place: a real agent, real
//! pipelines run by `sh`, and the reader's own `F_GETPIPE_SZ` on its stdin
//! as the proof.

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use resonance_tests::{
    agent::{Agent, counter_sum, scratch, start_agent_with, stop},
    http_get, serial, traffic_bin, wait_for,
};
use serde_json::Value;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// An agent whose `[grow]` section is `grow`.
fn agent_growing(dir: &Path, grow: &str) -> Agent {
    let config = dir.join("resonance.toml");
    std::fs::write(&config, format!("[grow]\n{grow}\n")).expect("writing the config");
    start_agent_with(dir, &["--config".as_ref(), config.as_os_str()])
}

/// The traffic binary under another name, so writer and reader are the
/// services the policy names.
fn program(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    if !path.exists() {
        std::fs::copy(traffic_bin(), &path).expect("copying the traffic binary");
    }
    path
}

/// What the reader printed: bytes read, its pipe's size first and largest.
#[derive(Debug, PartialEq, Eq)]
struct Read {
    bytes: u64,
    first: u64,
    largest: u64,
}

/// Runs `writer | reader` through `sh`, the reader taking `chunk`-byte
/// reads with `delay_us` after each.
fn pipeline(writer: &str, reader: &Path, chunk: u64, delay_us: u64) -> Read {
    let script = format!(
        "{writer} | {} stdin-reader {chunk} {delay_us}",
        reader.display()
    );
    let output = Command::new("sh")
        .args(["-c", &script])
        .output()
        .expect("running the pipeline");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{script}: {}\n{stdout}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let field = |name: &str| -> u64 {
        stdout
            .split_whitespace()
            .find_map(|word| word.strip_prefix(&format!("{name}=")))
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| panic!("no {name}= in the reader's output {stdout:?}"))
    };
    Read {
        bytes: field("bytes"),
        first: field("first"),
        largest: field("largest"),
    }
}

/// The growth decisions `explain` shows for `src` → `dst` over pipes.
fn decisions(agent: &Agent, src: &str, dst: &str) -> Vec<Value> {
    agent
        .explain(src, dst)
        .and_then(|explained| {
            explained["pipe_growth"]
                .as_array()?
                .iter()
                .find(|growth| growth["kind"] == "pipe")?["decisions"]
                .as_array()
                .cloned()
        })
        .unwrap_or_default()
}

fn scrape(agent: &Agent) -> String {
    http_get(agent.metrics, "/metrics")
        .expect("scraping /metrics")
        .1
}

fn outcome_count(agent: &Agent, outcome: &str) -> u64 {
    counter_sum(
        &scrape(agent),
        "resonance_pipe_growth_total",
        &format!("outcome=\"{outcome}\""),
    )
}

/// 50 MiB through `dd bs=256K`, the reader pausing 1 ms after each read:
/// the writer keeps finding the pipe full.
const DD: &str = "dd if=/dev/zero bs=256K count=200 status=none";

#[test]
fn a_blocked_writer_gets_a_larger_pipe_while_it_runs_and_the_next_run_at_once() {
    let _serial = serial();
    let dir = scratch("grow-running");
    let mut agent = agent_growing(&dir, "services = [\"dd\"]");
    let reader = program(&dir, "slow-reader");
    let read = pipeline(DD, &reader, MIB, 1000);
    assert_eq!(read.bytes, 200 * 256 * KIB);
    assert_eq!(read.first, 64 * KIB, "a new pipe has the default size");
    assert_eq!(
        read.largest,
        MIB,
        "the reader saw its pipe grown to grow.max_size:\n{}",
        agent.log_text()
    );
    let first_run = wait_for(Duration::from_secs(5), || {
        let found = decisions(&agent, "dd", "slow-reader");
        (!found.is_empty()).then_some(found)
    })
    .unwrap_or_else(|| {
        panic!(
            "no decision in explain dd slow-reader:\n{}",
            agent.log_text()
        )
    });
    let grown: Vec<&Value> = first_run
        .iter()
        .filter(|d| d["outcome"] == "grown")
        .collect();
    assert!(!grown.is_empty(), "{first_run:#?}");
    assert_eq!(grown[0]["from"], 64 * KIB, "{first_run:#?}");
    assert_eq!(grown[0]["learned"], false, "{first_run:#?}");
    assert_eq!(grown.last().map(|d| d["to"].clone()), Some(MIB.into()));
    assert!(
        first_run
            .iter()
            .any(|d| d["outcome"] == "policy_max_size" && d["limit"] == "policy_max_size"),
        "once at 1 MiB, grow.max_size holds it: {first_run:#?}"
    );
    assert!(outcome_count(&agent, "grown") >= 1);
    let pipe = grown[0]["pipe"].clone();

    // The same pair again: its new pipe reaches the learned size in one
    // step, at its first blocked write.
    let second = pipeline(DD, &reader, MIB, 1000);
    assert_eq!((second.first, second.largest), (64 * KIB, MIB));
    let first_of_second = wait_for(Duration::from_secs(5), || {
        decisions(&agent, "dd", "slow-reader")
            .into_iter()
            .find(|d| d["pipe"] != pipe)
    })
    .expect("a decision on the second run's pipe");
    assert_eq!(first_of_second["outcome"], "grown", "{first_of_second:#}");
    assert_eq!(first_of_second["from"], 64 * KIB, "{first_of_second:#}");
    assert_eq!(first_of_second["to"], MIB, "{first_of_second:#}");
    assert_eq!(first_of_second["learned"], true, "{first_of_second:#}");

    // What was learned survives a restart.
    stop(&mut agent);
    let agent = agent_growing(&dir, "services = [\"dd\"]");
    let third = pipeline(DD, &reader, MIB, 1000);
    assert_eq!(third.largest, MIB);
    let first_of_third = wait_for(Duration::from_secs(5), || {
        decisions(&agent, "dd", "slow-reader").into_iter().next()
    })
    .expect("a decision after the restart");
    assert_eq!(first_of_third["learned"], true, "{first_of_third:#}");
    assert_eq!(first_of_third["to"], MIB, "{first_of_third:#}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn no_pipe_grows_past_pipe_max_size_or_outside_the_policy() {
    let _serial = serial();
    let dir = scratch("grow-limits");
    let max = std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
        .expect("reading pipe-max-size")
        .trim()
        .parse::<u64>()
        .expect("a number");
    // The policy allows sixteen times what the kernel's limit allows.
    let agent = agent_growing(
        &dir,
        &format!("services = [\"grown-*\"]\nmax_size = {}", 16 * max),
    );
    let reader = program(&dir, "grown-reader");
    let read = pipeline(DD, &reader, MIB, 1000);
    assert_eq!(read.largest, max, "{}", agent.log_text());
    let found = wait_for(Duration::from_secs(5), || {
        let found = decisions(&agent, "dd", "grown-reader");
        found
            .iter()
            .any(|d| d["outcome"] == "pipe_max_size")
            .then_some(found)
    })
    .unwrap_or_else(|| panic!("pipe-max-size never held it:\n{}", agent.log_text()));
    assert!(
        found.iter().all(|d| d["to"].as_u64() <= Some(max)),
        "{found:#?}"
    );

    // Neither writer nor reader named: untouched, and said so.
    let other = program(&dir, "plain-reader");
    let untouched = pipeline(DD, &other, MIB, 1000);
    assert_eq!((untouched.first, untouched.largest), (64 * KIB, 64 * KIB));
    let refused = wait_for(Duration::from_secs(5), || {
        decisions(&agent, "dd", "plain-reader").into_iter().next()
    })
    .expect("a decision on the unnamed pair");
    assert_eq!(refused["outcome"], "not_in_policy", "{refused:#}");
    assert_eq!(refused["to"], 0, "{refused:#}");
    assert!(outcome_count(&agent, "not_in_policy") >= 1);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Sets a `/proc/sys/fs` value for the test's length.
struct Sysctl {
    path: &'static str,
    old: String,
}

impl Sysctl {
    fn set(path: &'static str, value: u64) -> Self {
        let old = std::fs::read_to_string(path).expect("reading the sysctl");
        std::fs::write(path, value.to_string()).expect("setting the sysctl");
        Self { path, old }
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        let _ = std::fs::write(self.path, self.old.trim());
    }
}

#[test]
fn a_users_soft_page_limit_keeps_room_for_its_next_pipe() {
    let _serial = serial();
    let dir = scratch("grow-user");
    // `nobody` must be able to run the copies.
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("opening the scratch folder");
    let agent = agent_growing(&dir, "services = [\"*\"]");
    let reader = program(&dir, "user-reader");
    let as_nobody = "setpriv --reuid=nobody --regid=nogroup --clear-groups";
    // 128 pages: the pipeline's own pipe holds 16, 16 stay free for the
    // user's next pipe, so 96 more may be added: 64 + 96 * 4 KiB rounds
    // down to 256 KiB. The agent (CAP_SYS_RESOURCE) is not held by the
    // kernel's check; only its own keeps it there.
    let page = 4 * KIB;
    assert_eq!(
        page,
        u64::try_from(nix_page_size()).expect("page size"),
        "the arithmetic below assumes 4 KiB pages"
    );
    let _soft = Sysctl::set("/proc/sys/fs/pipe-user-pages-soft", 128);
    let nobody = nobody_uid();
    let theirs: Vec<String> = std::fs::read_dir("/proc")
        .expect("reading /proc")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter(|e| e.metadata().is_ok_and(|m| m.uid() == nobody))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        theirs.is_empty(),
        "processes of nobody ({theirs:?}) hold pipes; the arithmetic needs none"
    );
    // The whole pipeline as nobody, so the pipe is nobody's (the kernel
    // charges a pipe to the user who made it).
    let script = format!(
        "{as_nobody} sh -c '{DD} | {} stdin-reader {MIB} 1000'",
        reader.display()
    );
    let output = Command::new("sh")
        .args(["-c", &script])
        .output()
        .expect("running the pipeline as nobody");
    let read = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{output:?}");
    assert!(
        read.contains("first=65536 largest=262144"),
        "grown to 256 KiB and no further: {read}\n{}",
        agent.log_text()
    );
    // Room was kept: a pipe the user made while the grown one was still
    // open got the full default, not the one or two pages of a user past
    // the soft limit.
    assert!(read.contains("fresh=65536"), "{read}");
    let found = decisions(&agent, "dd", "user-reader");
    assert!(
        found.iter().any(|d| d["limit"] == "user_soft_limit"),
        "{found:#?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn nobody_uid() -> u32 {
    let passwd = std::fs::read_to_string("/etc/passwd").expect("reading /etc/passwd");
    passwd
        .lines()
        .find_map(|line| line.strip_prefix("nobody:"))
        .and_then(|rest| rest.split(':').nth(1)?.parse().ok())
        .expect("a nobody user")
}

fn nix_page_size() -> i64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) }
}

#[test]
fn a_writer_that_exits_or_closes_its_pipe_meanwhile_is_a_counted_non_event() {
    let _serial = serial();
    let dir = scratch("grow-gone");
    let agent = agent_growing(&dir, "services = [\"*\"]");
    let pid = agent.process.0.id() as i32;
    let writer = program(&dir, "closing-writer");
    let reader = program(&dir, "gone-reader");
    // Stopped, the agent reads the reports only after the writer is gone
    // (first run) or has closed its end and reopened fd 1 elsewhere
    // (second run, still alive while the agent looks).
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let gone = pipeline(DD, &reader, MIB, 1000);
    assert_eq!(gone.largest, 64 * KIB);
    let closing = Command::new("sh")
        .args([
            "-c",
            &format!(
                "{} write-then-close 52428800 262144 4000 | {} stdin-reader 1048576 1000 & \
                 sleep 2",
                writer.display(),
                reader.display()
            ),
        ])
        .status()
        .expect("running the closing pipeline");
    assert!(closing.success());
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let counted = wait_for(Duration::from_secs(10), || {
        let gone = outcome_count(&agent, "process_gone");
        let closed = outcome_count(&agent, "pipe_closed");
        (gone >= 1 && closed >= 1).then_some((gone, closed))
    });
    assert!(
        counted.is_some(),
        "both counted:\n{}\n{}",
        scrape(&agent),
        agent.log_text()
    );
    // And nothing else broke: the next pipeline is grown as usual.
    let after = pipeline(DD, &reader, MIB, 1000);
    assert_eq!(after.largest, MIB, "{}", agent.log_text());
    let _ = std::fs::remove_dir_all(&dir);
}
