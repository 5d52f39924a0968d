//! The suite's proof that it notices a wrong kernel layout: the kernel
//! tests run once more with one offset deliberately shifted, and must fail
//! exactly where that field is read (on the host and in every guest).

use anyhow::Result;

/// The agent's test hook that shifts one kernel struct offset.
pub const CORRUPT_OFFSET_ENV: &str = "RESONANCE_TEST_CORRUPT_OFFSET";
/// The offset `cargo xtask test` corrupts to prove the suite notices: the
/// Unix socket peer, a subtle one (pipes still work, socket joins do not).
pub const CORRUPTED_FIELD: &str = "unix_peer";

/// Kernel tests that join Unix sockets by their peer: a wrong `unix_peer`
/// offset must fail each of them.
const JOINS_BY_UNIX_PEER: &[&str] = &[
    "unix_stream_counts_each_way_and_shows_the_server_delay_as_turnaround",
    "socketpair_across_fork_is_reported_as_unix_stream_both_ways",
    "unix_datagrams_are_counted_per_message",
];
/// Kernel tests of pipes and FIFOs, which never read `unix_peer`: they must
/// pass with it corrupted, or the failures above prove nothing about it.
const NEVER_READ_UNIX_PEER: &[&str] = &[
    "shell_pipeline_head_to_cat_is_one_pipe_of_exactly_ten_million_bytes",
    "named_fifo_joins_writer_and_reader",
    "writes_into_a_full_pipe_count_as_blocked_and_writes_that_fit_do_not",
    "reused_descriptor_numbers_count_as_what_they_refer_to_now",
];

/// A libtest result line (`test NAME ... ok` / `... FAILED`, possibly
/// behind a console prefix): the test's name and whether it passed.
pub fn test_outcome(line: &str) -> Option<(String, bool)> {
    let rest = &line[line.find("test ")? + 5..];
    let (name, verdict) = rest.trim_end().rsplit_once(" ... ")?;
    let passed = match verdict {
        "ok" => true,
        "FAILED" => false,
        _ => return None,
    };
    let name = name.rsplit("::").next().unwrap_or(name);
    Some((name.to_owned(), passed))
}

/// Whether a run with `unix_peer` corrupted failed the way it must: every
/// socket-join test failed and every pipe test passed. Says what it saw.
pub fn verdict(tests: &[(String, bool)]) -> Result<String> {
    let outcome = |name: &str| tests.iter().find(|(n, _)| n == name).map(|(_, ok)| *ok);
    let mut wrong = Vec::new();
    for name in JOINS_BY_UNIX_PEER {
        match outcome(name) {
            Some(false) => {}
            Some(true) => wrong.push(format!("{name} passed")),
            None => wrong.push(format!("{name} did not run")),
        }
    }
    for name in NEVER_READ_UNIX_PEER {
        match outcome(name) {
            Some(true) => {}
            Some(false) => wrong.push(format!("{name} failed")),
            None => wrong.push(format!("{name} did not run")),
        }
    }
    if !wrong.is_empty() {
        anyhow::bail!(
            "with {CORRUPTED_FIELD} corrupted, the socket joins must fail and the pipe tests pass: {}",
            wrong.join("; ")
        );
    }
    let failed = tests.iter().filter(|(_, ok)| !ok).count();
    Ok(format!(
        "the corrupted {CORRUPTED_FIELD} failed {failed} kernel tests, all {} socket joins among them, and no pipe test",
        JOINS_BY_UNIX_PEER.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_lines_are_read_with_or_without_a_console_prefix() {
        assert_eq!(
            test_outcome("test a_b ... ok"),
            Some(("a_b".to_owned(), true))
        );
        assert_eq!(
            test_outcome("    | test tests::c ... FAILED"),
            Some(("c".to_owned(), false))
        );
        assert_eq!(test_outcome("test result: FAILED. 1 passed"), None);
        assert_eq!(test_outcome("running 3 tests"), None);
    }

    #[test]
    fn a_corruption_run_must_fail_the_joins_and_pass_the_pipes() {
        let all = |joins: bool, pipes: bool| -> Vec<(String, bool)> {
            JOINS_BY_UNIX_PEER
                .iter()
                .map(|n| (n.to_string(), joins))
                .chain(NEVER_READ_UNIX_PEER.iter().map(|n| (n.to_string(), pipes)))
                .collect()
        };
        assert!(verdict(&all(false, true)).is_ok());
        // Any failure is not enough: the pipes failing too, or a join
        // passing, or a test missing, is not the proof.
        assert!(verdict(&all(false, false)).is_err());
        assert!(verdict(&all(true, true)).is_err());
        let mut missing = all(false, true);
        missing.pop();
        assert!(verdict(&missing).is_err());
    }
}
