//! Replays the committed fuzz corpora (`fuzz/corpus/<target>/`) through the
//! same property checks the `cargo fuzz` targets run (`tollgate::fuzzing`),
//! on the stable toolchain: every input a fuzzer kept stays a test.
//! See docs/fuzzing.md.

use std::path::PathBuf;

use tollgate::fuzzing::{TARGETS, check};

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|p| p.is_file())
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, bytes)
        })
        .collect();
    files.sort();
    files
}

fn replay(target: &str) {
    let files = corpus(target);
    assert!(
        files.len() >= 10,
        "fuzz/corpus/{target} holds {} inputs: the replay would prove nothing",
        files.len()
    );
    for (path, bytes) in &files {
        let run = std::panic::catch_unwind(|| check(target, bytes));
        assert!(run.is_ok(), "{target}: {} fails its check", path.display());
    }
}

#[test]
fn every_target_has_a_corpus() {
    for target in TARGETS {
        assert!(
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("fuzz/fuzz_targets")
                .join(format!("{target}.rs"))
                .is_file(),
            "no fuzz target for {target}"
        );
    }
}

#[test]
fn request_corpus() {
    replay("request");
}

#[test]
fn sse_corpus() {
    replay("sse");
}

#[test]
fn json_answer_corpus() {
    replay("json_answer");
}

#[test]
fn error_body_corpus() {
    replay("error_body");
}

#[test]
fn config_corpus() {
    replay("config");
}

#[test]
fn translate_corpus() {
    replay("translate");
}
