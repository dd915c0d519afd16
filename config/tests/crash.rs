//! Crash safety of apply: a process that dies at any point of an apply leaves the old or the
//! new configuration, never a mix, and the next start repairs the history.
//!
//! The test binary re-executes itself (`crash_child`) with environment variables that make
//! the child apply a document and abort at a given step, or apply in a loop until killed.
//! This works under `cargo test` and `cargo nextest run` alike: both run the libtest harness,
//! which accepts `crash_child --exact`.

#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use kos_config::layout::init_layout;
use kos_config::snapshot::{Action, SnapshotRecord};
use kos_config::{Capabilities, ConfigDir, LoadOptions, ProfileKind, SnapshotId, Store, preset};
use tempfile::TempDir;

/// Config directory of the child; its presence makes `crash_child` run.
const DIR_VAR: &str = "KOS_CRASH_CHILD_DIR";
/// File holding the document the child applies.
const DOC_VAR: &str = "KOS_CRASH_DOC_FILE";
/// Abort at the N-th hook call (1-based); 0 = never.
const AT_VAR: &str = "KOS_CRASH_AT";
/// With `KOS_CRASH_AT=0`: apply the new and the old document alternately until killed.
const LOOP_VAR: &str = "KOS_CRASH_LOOP";
/// Loop mode: file holding the old document.
const OLD_VAR: &str = "KOS_CRASH_OLD_FILE";
/// Printed by the child in loop mode once it is about to apply.
const READY: &str = "KOS_CRASH_READY";

const PROFILE: &str = "profiles/standalone.yaml";

fn opts() -> LoadOptions {
    LoadOptions {
        env: BTreeMap::new(),
        capabilities: Capabilities {
            postgres: true,
            ..Default::default()
        },
        profile: None,
    }
}

fn old_doc() -> String {
    preset(ProfileKind::Standalone).to_string()
}

/// Differs from the old document in a live section and a restart section.
fn new_doc() -> String {
    let old = old_doc();
    let new = old
        .replace("level: info", "level: debug")
        .replace("listen: 127.0.0.1:7420", "listen: 127.0.0.1:7421");
    assert_ne!(new, old);
    new
}

/// The child side. Does nothing unless started by one of the tests below.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(DIR_VAR) else {
        return;
    };
    let doc = fs::read_to_string(std::env::var(DOC_VAR).unwrap()).unwrap();
    let at: usize = std::env::var(AT_VAR)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let store = Store::open(&ConfigDir::new(&dir)).unwrap();
    if at == 0 && std::env::var_os(LOOP_VAR).is_some() {
        let old = fs::read_to_string(std::env::var(OLD_VAR).unwrap()).unwrap();
        let mut out = std::io::stdout();
        writeln!(out, "{READY}").unwrap();
        out.flush().unwrap();
        loop {
            for d in [&doc, &old] {
                store.apply(&opts(), None, d, "crash-loop").unwrap();
            }
        }
    }
    let mut count = 0;
    store
        .apply_with_hook(
            &opts(),
            None,
            &doc,
            "crash-test",
            Action::Apply,
            None,
            &mut |_step| {
                count += 1;
                if count == at {
                    std::process::abort();
                }
            },
        )
        .unwrap();
}

/// A scratch area: `kos/` (the config directory, initialised and reconciled) and the two
/// documents beside it.
struct Scratch {
    tmp: TempDir,
    old_id: SnapshotId,
    new_id: SnapshotId,
}

impl Scratch {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("kos");
        init_layout(&root, ProfileKind::Standalone).unwrap();
        assert_eq!(fs::read_to_string(root.join(PROFILE)).unwrap(), old_doc());
        fs::write(tmp.path().join("old.yaml"), old_doc()).unwrap();
        fs::write(tmp.path().join("new.yaml"), new_doc()).unwrap();
        let dir = ConfigDir::new(&root);
        let loaded = dir.load(&opts()).unwrap();
        let store = Store::open(&dir).unwrap();
        store.reconcile(&loaded, "test").unwrap().unwrap();
        let new_id = dir
            .load_candidate(&opts(), "standalone", &new_doc(), PROFILE)
            .unwrap()
            .snapshot_id;
        assert_ne!(loaded.snapshot_id, new_id);
        Self {
            tmp,
            old_id: loaded.snapshot_id,
            new_id,
        }
    }

    fn root(&self) -> PathBuf {
        self.tmp.path().join("kos")
    }

    fn child(&self) -> Command {
        let mut c = Command::new(std::env::current_exe().unwrap());
        c.args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
            // Core dumps, if enabled, land in the scratch area.
            .current_dir(self.tmp.path())
            .env(DIR_VAR, self.root())
            .env(DOC_VAR, self.tmp.path().join("new.yaml"))
            .env(OLD_VAR, self.tmp.path().join("old.yaml"))
            .env_remove(LOOP_VAR)
            .stdin(Stdio::null());
        c
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Old,
    New,
}

fn tmp_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            tmp_files(&e.path(), out);
        } else if e.file_name().to_string_lossy().contains(".tmp.") {
            out.push(e.path());
        }
    }
}

/// Checks every invariant after a crash and restarts the way the node does (open,
/// reconcile). Returns the state found and the action reconcile recorded, if any.
fn check(s: &Scratch, context: &str) -> (State, Option<Action>) {
    let root = s.root();
    let bytes = fs::read(root.join(PROFILE)).unwrap();
    let state = if bytes == old_doc().as_bytes() {
        State::Old
    } else if bytes == new_doc().as_bytes() {
        State::New
    } else {
        panic!(
            "{context}: the profile is neither the old nor the new document:\n{}",
            String::from_utf8_lossy(&bytes)
        );
    };
    let dir = ConfigDir::new(&root);
    let loaded = dir
        .load(&opts())
        .unwrap_or_else(|d| panic!("{context}: does not load:\n{d}"));
    let expected = if state == State::Old {
        &s.old_id
    } else {
        &s.new_id
    };
    assert_eq!(&loaded.snapshot_id, expected, "{context}");

    let store = Store::open(&dir).unwrap();
    let mut leftovers = Vec::new();
    tmp_files(&root, &mut leftovers);
    assert!(
        leftovers.is_empty(),
        "{context}: temporary files left after open: {leftovers:?}"
    );

    let history = store
        .history()
        .unwrap_or_else(|e| panic!("{context}: history unreadable: {e}"));
    assert!(!history.is_empty(), "{context}");
    for (i, e) in history.iter().enumerate() {
        assert_eq!(
            e.seq,
            i as u64 + 1,
            "{context}: history not contiguous: {history:#?}"
        );
        assert!(
            e.id == s.old_id || e.id == s.new_id,
            "{context}: unknown id in history: {e:?}"
        );
        let rec = store
            .snapshot(&e.id)
            .unwrap_or_else(|err| panic!("{context}: snapshot of entry {}: {err}", e.seq));
        assert_eq!(rec.id, e.id, "{context}");
        if i > 0 {
            assert_eq!(e.previous.as_ref(), Some(&history[i - 1].id), "{context}");
        }
    }
    for f in fs::read_dir(root.join("state/snapshots")).unwrap() {
        let p = f.unwrap().path();
        let rec: SnapshotRecord = serde_json::from_str(&fs::read_to_string(&p).unwrap())
            .unwrap_or_else(|e| panic!("{context}: {} does not parse: {e}", p.display()));
        assert!(
            rec.id == s.old_id || rec.id == s.new_id,
            "{context}: {}",
            p.display()
        );
        assert_eq!(
            p.file_name().unwrap().to_string_lossy(),
            format!("{}.json", rec.id)
        );
    }

    let recorded = store
        .reconcile(&loaded, "restart")
        .unwrap()
        .map(|e| e.action);
    assert_eq!(
        store.head().unwrap().unwrap().id,
        loaded.snapshot_id,
        "{context}: head after reconcile"
    );
    (state, recorded)
}

/// Runs one apply in-process, recording the hook steps.
fn record_steps() -> Vec<&'static str> {
    let s = Scratch::new();
    let store = Store::open(&ConfigDir::new(s.root())).unwrap();
    let mut steps = Vec::new();
    let out = store
        .apply_with_hook(
            &opts(),
            None,
            &new_doc(),
            "record",
            Action::Apply,
            None,
            &mut |step| steps.push(step),
        )
        .unwrap();
    assert_eq!(out.loaded.snapshot_id, s.new_id);
    assert_eq!(check(&s, "recording run"), (State::New, None));
    steps
}

/// 1-based number of the first `step` after `after`.
fn position(steps: &[&str], after: &str, step: &str) -> usize {
    let start = steps.iter().position(|s| *s == after).unwrap();
    start + 1 + steps[start..].iter().position(|s| *s == step).unwrap()
}

#[test]
fn abort_at_every_step_leaves_old_or_new() {
    let started = Instant::now();
    let steps = record_steps();
    assert!(steps.len() > 10, "{steps:?}");
    for s in [
        "validated",
        "locked",
        "snapshot_written",
        "committed",
        "history_written",
    ] {
        assert!(steps.contains(&s), "{s} missing from {steps:?}");
    }
    // Three atomic writes: snapshot record, profile, history entry.
    assert_eq!(
        steps.iter().filter(|s| **s == "temp_half_written").count(),
        3,
        "{steps:?}"
    );
    let profile_renamed = position(&steps, "snapshot_written", "renamed");
    let history_renamed = position(&steps, "committed", "renamed");

    let mut seen = Vec::new();
    for n in 1..=steps.len() {
        let s = Scratch::new();
        let out = s.child().env(AT_VAR, n.to_string()).output().unwrap();
        let context = format!("abort at step {n} ({})", steps[n - 1]);
        assert_eq!(
            out.status.signal(),
            Some(6),
            "{context}: the child did not abort: {:?}\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let (state, recorded) = check(&s, &context);
        // The profile rename is the commit point.
        let expected = if n >= profile_renamed {
            State::New
        } else {
            State::Old
        };
        assert_eq!(state, expected, "{context}");
        // Committed but not recorded: the next start records it as recovered.
        let expected_action = (profile_renamed..history_renamed)
            .contains(&n)
            .then_some(Action::Recovered);
        assert_eq!(recorded, expected_action, "{context}");
        seen.push(state);

        // The store is usable after the crash.
        let store = Store::open(&ConfigDir::new(s.root())).unwrap();
        let current = if state == State::Old {
            &s.old_id
        } else {
            &s.new_id
        };
        let again = store
            .apply(&opts(), Some(current), &old_doc(), "after-crash")
            .unwrap();
        assert_eq!(again.loaded.snapshot_id, s.old_id, "{context}");
        assert_eq!(
            fs::read_to_string(s.root().join(PROFILE)).unwrap(),
            old_doc()
        );
    }
    assert!(
        seen.contains(&State::Old) && seen.contains(&State::New),
        "{seen:?}"
    );
    eprintln!(
        "aborted at each of {} steps in {:?}",
        steps.len(),
        started.elapsed()
    );
}

/// Kills the child when dropped, so a failing test leaves no looping process behind.
struct KillOnDrop(Option<Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn sigkill_at_random_times_leaves_old_or_new() {
    let started = Instant::now();
    let mut seed = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("random kill seed: {seed}");
    // One directory for every round: each start recovers from the previous kill.
    let s = Scratch::new();
    let mut counts = [0usize; 2];
    for round in 0..20 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = Duration::from_millis(1 + seed % 30);
        let child = s
            .child()
            .env(AT_VAR, "0")
            .env(LOOP_VAR, "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut guard = KillOnDrop(Some(child));
        let stdout = guard.0.as_mut().unwrap().stdout.take().unwrap();
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap() == 0 {
                let out = guard.0.take().unwrap().wait_with_output().unwrap();
                panic!(
                    "round {round}: the child ended before applying: {:?}\n{}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            if line.contains(READY) {
                break;
            }
        }
        std::thread::sleep(delay);
        let mut child = guard.0.take().unwrap();
        child.kill().unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            out.status.signal(),
            Some(9),
            "round {round}: the child stopped before it was killed: {:?}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let (state, _) = check(&s, &format!("round {round}, killed after {delay:?}"));
        counts[usize::from(state == State::New)] += 1;
    }
    let store = Store::open(&ConfigDir::new(s.root())).unwrap();
    eprintln!(
        "20 random kills in {:?}: {} left the old document, {} the new; {} history entries",
        started.elapsed(),
        counts[0],
        counts[1],
        store.history().unwrap().len()
    );
}
