//! The test kit's own promises, where a test relies on them to say why it failed.

use cairn_testkit::programs::wait_for_line_within;
use std::process::Command;
use std::time::Duration;

#[test]
fn a_program_that_stalls_is_killed_and_named_with_what_it_was_doing() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stall.log");
    let out = std::fs::File::create(&log).unwrap();
    let mut child =
        Command::new("/bin/sh").args(["-c", "echo starting >&2; exec sleep 30"]).stderr(out).spawn().unwrap();
    let why = wait_for_line_within(&mut child, "the staller", &log, "listening", Duration::from_secs(3)).unwrap_err();
    assert!(why.contains("the staller wrote no \"listening\""), "{why}");
    assert!(why.contains("sleep S wchan="), "the sleeping thread is named with its state: {why}");
    assert!(why.contains("starting"), "the log is quoted: {why}");
    assert!(child.try_wait().unwrap().is_some(), "it was killed");

    let out = std::fs::File::create(&log).unwrap();
    let mut child = Command::new("/bin/sh").args(["-c", "echo listening on 1 >&2; exec sleep 30"]).stderr(out).spawn().unwrap();
    assert_eq!(wait_for_line_within(&mut child, "the starter", &log, "listening", Duration::from_secs(20)).unwrap(), "listening on 1");
    let _ = child.kill();
    let _ = child.wait();
}
