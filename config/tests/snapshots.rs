//! Integration tests of the snapshot store: history, compare-and-swap apply, rollback.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use kos_config::layout::init_layout;
use kos_config::snapshot::{Action, Committed, FederationSource, HistoryEntry, atomic_write};
use kos_config::{
    Capabilities, ConfigDir, LoadOptions, Loaded, ProfileKind, SnapshotId, Store, StoreError,
    preset,
};
use tempfile::TempDir;

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

/// A standalone directory, opened and reconciled (one `init` entry).
fn setup() -> (TempDir, Store, Loaded) {
    let tmp = tempfile::tempdir().unwrap();
    init_layout(tmp.path(), ProfileKind::Standalone).unwrap();
    let dir = ConfigDir::new(tmp.path());
    let store = Store::open(&dir).unwrap();
    let loaded = dir.load(&opts()).unwrap();
    (tmp, store, loaded)
}

fn original() -> String {
    preset(ProfileKind::Standalone).to_string()
}

fn with_level(level: &str) -> String {
    let doc = original();
    assert!(doc.contains("level: info"));
    doc.replace("level: info", &format!("level: {level}"))
}

fn with_port(port: u16) -> String {
    let doc = original();
    assert!(doc.contains("listen: 127.0.0.1:7420"));
    doc.replace(
        "listen: 127.0.0.1:7420",
        &format!("listen: 127.0.0.1:{port}"),
    )
}

fn profile_bytes(root: &Path) -> Vec<u8> {
    fs::read(root.join(PROFILE)).unwrap()
}

fn snapshot_files(root: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(root.join("state/snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn current_id(root: &Path) -> SnapshotId {
    ConfigDir::new(root).load(&opts()).unwrap().snapshot_id
}

fn assert_history_intact(store: &Store) -> Vec<HistoryEntry> {
    let h = store.history().unwrap();
    for (i, e) in h.iter().enumerate() {
        assert_eq!(e.seq, i as u64 + 1, "{h:#?}");
        let rec = store.snapshot(&e.id).unwrap();
        assert_eq!(rec.id, e.id);
        if i > 0 {
            assert_eq!(e.previous.as_ref(), Some(&h[i - 1].id), "{h:#?}");
        }
    }
    h
}

#[test]
fn reconcile_records_init_once() {
    let (tmp, store, loaded) = setup();
    assert!(store.history().unwrap().is_empty());
    assert!(store.head().unwrap().is_none());
    let e = store
        .reconcile(&loaded, "test")
        .unwrap()
        .expect("first reconcile records an entry");
    assert_eq!(e.seq, 1);
    assert_eq!(e.action, Action::Init);
    assert_eq!(e.id, loaded.snapshot_id);
    assert_eq!(e.previous, None);
    assert_eq!(e.profile_id, "standalone");
    assert_eq!(e.actor, "test");
    assert!(
        store.reconcile(&loaded, "test").unwrap().is_none(),
        "nothing changed"
    );
    assert_eq!(assert_history_intact(&store).len(), 1);
    let rec = store.snapshot(&loaded.snapshot_id).unwrap();
    assert_eq!(rec.document, loaded.document);
    assert_eq!(rec.profile_id, "standalone");
    assert_eq!(
        rec.effective,
        serde_json::from_str::<serde_json::Value>(&loaded.canonical).unwrap()
    );
    assert!(tmp.path().join("state/history/0000000001.json").is_file());
    // Reopening sees the same history.
    let again = Store::open(&ConfigDir::new(tmp.path())).unwrap();
    assert_eq!(again.history().unwrap(), store.history().unwrap());
}

#[test]
fn apply_with_matching_if_match() {
    let (tmp, store, loaded) = setup();
    store.reconcile(&loaded, "test").unwrap();
    let doc = with_level("debug");
    let out = store
        .apply(&opts(), Some(&loaded.snapshot_id), &doc, "alice")
        .unwrap();
    assert!(!out.unchanged);
    assert_eq!(out.previous.as_ref(), Some(&loaded.snapshot_id));
    assert_eq!(out.loaded.config.logging.level.0, "debug");
    assert_eq!(out.entry.seq, 2);
    assert_eq!(out.entry.action, Action::Apply);
    assert_eq!(out.entry.actor, "alice");
    assert_eq!(out.entry.previous.as_ref(), Some(&loaded.snapshot_id));
    assert_eq!(out.entry.target, None);
    // Only the logging level changed, which is live.
    let paths: Vec<&str> = out.changes.iter().map(|c| c.path.as_str()).collect();
    assert_eq!(paths, ["logging.level"]);
    assert_eq!(out.live, ["logging"]);
    assert!(out.restart_required.is_empty());
    assert!(out.entry.restart_required.is_empty());

    assert_eq!(profile_bytes(tmp.path()), doc.as_bytes());
    assert_eq!(current_id(tmp.path()), out.loaded.snapshot_id);
    let h = assert_history_intact(&store);
    assert_eq!(h.len(), 2);
    assert_eq!(h[1], out.entry);
    assert_eq!(store.head().unwrap().unwrap().id, out.loaded.snapshot_id);
    assert_eq!(
        store.snapshot(&out.loaded.snapshot_id).unwrap().document,
        doc
    );

    // Quoted and `sha256:`-prefixed ids (as in an If-Match header) are the same id.
    let quoted = SnapshotId::parse(&format!("\"sha256:{}\"", out.loaded.snapshot_id)).unwrap();
    let out2 = store
        .apply(&opts(), Some(&quoted), &with_level("warn"), "alice")
        .unwrap();
    assert_eq!(out2.entry.seq, 3);
}

#[test]
fn apply_with_stale_if_match_conflicts_and_writes_nothing() {
    let (tmp, store, loaded) = setup();
    store.reconcile(&loaded, "test").unwrap();
    let first = store
        .apply(
            &opts(),
            Some(&loaded.snapshot_id),
            &with_level("debug"),
            "alice",
        )
        .unwrap();

    let before_profile = profile_bytes(tmp.path());
    let before_snaps = snapshot_files(tmp.path());
    let before_hist = store.history().unwrap();
    // Bob still holds the id from before Alice's change.
    let err = store
        .apply(
            &opts(),
            Some(&loaded.snapshot_id),
            &with_level("warn"),
            "bob",
        )
        .unwrap_err();
    match &err {
        StoreError::Conflict { expected, current } => {
            assert_eq!(expected, &loaded.snapshot_id);
            assert_eq!(current.as_ref(), Some(&first.loaded.snapshot_id));
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert!(
        err.to_string().contains(first.loaded.snapshot_id.as_str()),
        "{err}"
    );
    assert_eq!(profile_bytes(tmp.path()), before_profile);
    assert_eq!(snapshot_files(tmp.path()), before_snaps);
    assert_eq!(store.history().unwrap(), before_hist);
    assert_eq!(store.history().unwrap().len(), 2);
}

#[test]
fn invalid_document_is_refused_with_every_error_and_writes_nothing() {
    let (tmp, store, loaded) = setup();
    store.reconcile(&loaded, "test").unwrap();
    let before_profile = profile_bytes(tmp.path());
    let before_snaps = snapshot_files(tmp.path());
    let doc = "profile: standalone\nlogging:\n  level: loud\napi:\n  lisen: 127.0.0.1:1\nstorage:\n  database: postgress\n";
    let err = store
        .apply(&opts(), Some(&loaded.snapshot_id), doc, "alice")
        .unwrap_err();
    let StoreError::Invalid(d) = err else {
        panic!("expected Invalid, got {err:?}")
    };
    let errs: Vec<String> = d.errors().map(ToString::to_string).collect();
    assert_eq!(
        errs,
        [
            format!(
                "{PROFILE}:3:10: logging.level: `loud` is not a log level; expected one of: trace, debug, info, warn, error, off"
            ),
            format!("{PROFILE}:5:3: api.lisen: unknown key `lisen` (did you mean `listen`?)"),
            format!(
                "{PROFILE}:7:13: storage.database: unknown value `postgress`; expected one of: sqlite, postgresql (did you mean `postgresql`?)"
            ),
        ]
    );
    assert_eq!(profile_bytes(tmp.path()), before_profile);
    assert_eq!(snapshot_files(tmp.path()), before_snaps);
    assert_eq!(store.history().unwrap().len(), 1);
    // Broken YAML too.
    let err = store
        .apply(&opts(), None, "profile: [standalone\n", "alice")
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Invalid(d) if d.to_string().contains("invalid YAML")),
        "{err:?}"
    );
    assert_eq!(profile_bytes(tmp.path()), before_profile);
    assert_eq!(store.history().unwrap().len(), 1);
}

#[test]
fn restart_required_sections() {
    let (_tmp, store, loaded) = setup();
    store.reconcile(&loaded, "test").unwrap();
    let out = store
        .apply(&opts(), None, &with_port(7421), "alice")
        .unwrap();
    assert_eq!(out.restart_required, ["api"]);
    assert!(out.live.is_empty());
    assert_eq!(out.entry.restart_required, ["api"]);
    assert_eq!(out.loaded.config.api.listen.port(), 7421);
    // Both kinds at once.
    let doc = with_port(7422).replace("level: info", "level: debug");
    let out = store
        .apply(&opts(), Some(&out.loaded.snapshot_id), &doc, "alice")
        .unwrap();
    assert_eq!(out.live, ["logging"]);
    assert_eq!(out.restart_required, ["api"]);
    let h = store.history().unwrap();
    assert_eq!(h.last().unwrap().restart_required, ["api"]);
}

#[test]
fn rollback_restores_the_original_bytes() {
    let (tmp, store, loaded) = setup();
    let first = store.reconcile(&loaded, "test").unwrap().unwrap().id;
    let original_bytes = profile_bytes(tmp.path());
    let a = store
        .apply(&opts(), None, &with_level("debug"), "alice")
        .unwrap();
    let b = store
        .apply(&opts(), None, &with_port(7425), "alice")
        .unwrap();
    assert_ne!(profile_bytes(tmp.path()), original_bytes);

    // A rollback guarded by a stale id conflicts.
    let err = store
        .rollback(&opts(), &first, Some(&a.loaded.snapshot_id), "carol")
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");

    let out = store
        .rollback(&opts(), &first, Some(&b.loaded.snapshot_id), "carol")
        .unwrap();
    assert_eq!(profile_bytes(tmp.path()), original_bytes);
    assert_eq!(out.loaded.snapshot_id, first);
    assert_eq!(current_id(tmp.path()), first);
    assert_eq!(out.entry.action, Action::Rollback);
    assert_eq!(out.entry.target.as_ref(), Some(&first));
    assert_eq!(out.entry.previous.as_ref(), Some(&b.loaded.snapshot_id));
    assert_eq!(out.entry.actor, "carol");
    assert_eq!(out.restart_required, ["api"]);
    let h = assert_history_intact(&store);
    assert_eq!(
        h.iter().map(|e| e.action).collect::<Vec<_>>(),
        [Action::Init, Action::Apply, Action::Apply, Action::Rollback]
    );

    // Rolling back to an unknown snapshot.
    let unknown = SnapshotId::of("nothing");
    assert!(matches!(
        store.rollback(&opts(), &unknown, None, "carol"),
        Err(StoreError::NotFound(_))
    ));
}

#[test]
fn resolve_prefixes() {
    let (_tmp, store, loaded) = setup();
    let first = store.reconcile(&loaded, "test").unwrap().unwrap().id;
    let second = store
        .apply(&opts(), None, &with_level("debug"), "alice")
        .unwrap()
        .loaded
        .snapshot_id;
    assert_eq!(first.short().len(), 12);
    assert_eq!(store.resolve(first.short()).unwrap(), first);
    assert_eq!(store.resolve(&second.as_str()[..12]).unwrap(), second);
    assert_eq!(
        store
            .resolve(&second.as_str()[..12].to_ascii_uppercase())
            .unwrap(),
        second
    );
    assert_eq!(store.resolve(first.as_str()).unwrap(), first);
    assert_eq!(store.resolve(&format!("sha256:{first}")).unwrap(), first);
    assert!(
        matches!(
            store.resolve(&first.as_str()[..5]),
            Err(StoreError::NotFound(_))
        ),
        "too short"
    );
    assert!(matches!(
        store.resolve("zzzzzzzzzzzz"),
        Err(StoreError::NotFound(_))
    ));
    // A prefix that matches nothing in the history.
    let miss = ["000000000000", "ffffffffffff"]
        .into_iter()
        .find(|p| !first.as_str().starts_with(p) && !second.as_str().starts_with(p))
        .unwrap();
    assert!(matches!(store.resolve(miss), Err(StoreError::NotFound(_))));
}

#[test]
fn applying_the_same_document_again_is_unchanged() {
    let (tmp, store, loaded) = setup();
    store.reconcile(&loaded, "test").unwrap();
    let doc = with_level("debug");
    let out = store.apply(&opts(), None, &doc, "alice").unwrap();
    let before_hist = store.history().unwrap();
    let again = store
        .apply(&opts(), Some(&out.loaded.snapshot_id), &doc, "alice")
        .unwrap();
    assert!(again.unchanged);
    assert!(again.changes.is_empty() && again.live.is_empty() && again.restart_required.is_empty());
    assert_eq!(again.entry, out.entry);
    assert_eq!(store.history().unwrap(), before_hist);
    assert_eq!(profile_bytes(tmp.path()), doc.as_bytes());
}

#[test]
fn hand_edit_is_recorded_as_external() {
    let (tmp, store, loaded) = setup();
    store.reconcile(&loaded, "test").unwrap();
    fs::write(tmp.path().join(PROFILE), with_level("trace")).unwrap();
    let edited = ConfigDir::new(tmp.path()).load(&opts()).unwrap();
    assert_ne!(edited.snapshot_id, loaded.snapshot_id);
    let e = store.reconcile(&edited, "startup").unwrap().unwrap();
    assert_eq!(e.action, Action::External);
    assert_eq!(e.seq, 2);
    assert_eq!(e.previous.as_ref(), Some(&loaded.snapshot_id));
    assert_eq!(e.id, edited.snapshot_id);
    assert_eq!(
        store.snapshot(&edited.snapshot_id).unwrap().document,
        with_level("trace")
    );
    assert!(store.reconcile(&edited, "startup").unwrap().is_none());
    // An overlay change (system.env) is external too.
    let mut env = fs::read_to_string(tmp.path().join("system.env")).unwrap();
    env.push_str("KOS_LOGGING__FORMAT=json\n");
    fs::write(tmp.path().join("system.env"), env).unwrap();
    let l = ConfigDir::new(tmp.path()).load(&opts()).unwrap();
    assert_eq!(
        store.reconcile(&l, "startup").unwrap().unwrap().action,
        Action::External
    );
    assert_eq!(assert_history_intact(&store).len(), 3);
}

#[test]
fn apply_without_history_and_store_tmp_cleanup() {
    let (tmp, store, loaded) = setup();
    // No reconcile yet: an apply still works and records itself.
    let out = store
        .apply(
            &opts(),
            Some(&loaded.snapshot_id),
            &with_level("debug"),
            "alice",
        )
        .unwrap();
    assert_eq!(out.entry.seq, 1);
    assert_eq!(out.entry.previous, None);
    // Temporary files left by a crash are removed on open.
    for rel in [
        "state/snapshots/.x.json.tmp.1",
        "state/history/.0000000009.json.tmp.1",
        "profiles/.standalone.yaml.tmp.1",
    ] {
        fs::write(tmp.path().join(rel), "partial").unwrap();
    }
    let store = Store::open(&ConfigDir::new(tmp.path())).unwrap();
    for rel in [
        "state/snapshots/.x.json.tmp.1",
        "state/history/.0000000009.json.tmp.1",
        "profiles/.standalone.yaml.tmp.1",
    ] {
        assert!(!tmp.path().join(rel).exists(), "{rel} left behind");
    }
    assert_eq!(store.history().unwrap().len(), 1);
}

/// Applies a federation `monitoring` snapshot as federation sync does: validated with the
/// snapshot overlaid, then `commit` writes the scope file and reloads (`crash`: the process
/// stops right after the commit point, before anything else runs).
fn apply_federation(
    root: &Path,
    store: &Store,
    content: &str,
    crash: bool,
) -> Result<Committed, StoreError> {
    let dir = ConfigDir::new(root);
    let tree = kos_config::federation::check_content("monitoring", content, "test").unwrap();
    let candidate = dir
        .load_with_federation(&opts(), "monitoring", tree)
        .unwrap();
    let source = FederationSource {
        scope: "monitoring".into(),
        snapshot_id: "a".repeat(64),
        op: "b".repeat(64),
    };
    store.apply_federation(&candidate, source, "federation:admin", || {
        let path = root.join(kos_config::federation::scope_file("monitoring"));
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        atomic_write(&path, content.as_bytes(), None, &mut |_| {}).unwrap();
        if crash {
            return Err(StoreError::NotFound(
                "crashed after the commit point".into(),
            ));
        }
        dir.load(&opts()).map_err(StoreError::Invalid)
    })
}

#[test]
fn federation_snapshot_is_recorded_with_its_source() {
    let (tmp, store, loaded) = setup();
    store.reconcile(&loaded, "test").unwrap();
    let content = "monitoring:\n  metrics: [prometheus, grafana]\n";
    let c = apply_federation(tmp.path(), &store, content, false).unwrap();
    let e = c.entry.unwrap().expect("a new entry");
    assert_eq!(e.action, Action::Federation);
    assert_eq!(e.actor, "federation:admin");
    assert_eq!(e.id, c.loaded.snapshot_id);
    assert_eq!(e.id, current_id(tmp.path()));
    assert_ne!(e.id, loaded.snapshot_id);
    let f = e.federation.as_ref().unwrap();
    assert_eq!(
        (f.scope.as_str(), f.snapshot_id.as_str(), f.op.as_str()),
        (
            "monitoring",
            "a".repeat(64).as_str(),
            "b".repeat(64).as_str()
        )
    );
    let h = assert_history_intact(&store);
    assert_eq!(h.len(), 2);
    assert_eq!(h[1], e);
    // The same snapshot again (a node re-applies its snapshots at every start): no entry.
    let again = apply_federation(tmp.path(), &store, content, false).unwrap();
    assert!(again.entry.unwrap().is_none());
    assert_eq!(store.history().unwrap().len(), 2);
    // And the start-up reconcile agrees with the history.
    let now = ConfigDir::new(tmp.path()).load(&opts()).unwrap();
    assert!(store.reconcile(&now, "node").unwrap().is_none());
}

#[test]
fn federation_snapshot_crashed_after_its_commit_point_is_recovered_at_start() {
    let (tmp, store, loaded) = setup();
    store.reconcile(&loaded, "test").unwrap();
    let content = "monitoring:\n  metrics: [grafana]\n";
    assert!(apply_federation(tmp.path(), &store, content, true).is_err());
    assert_eq!(store.history().unwrap().len(), 1);
    // Next start: the configuration on disk has the snapshot, whose record was written
    // before the commit point, so the repair says `recovered` (not `external`).
    let now = ConfigDir::new(tmp.path()).load(&opts()).unwrap();
    let e = store.reconcile(&now, "node").unwrap().expect("repaired");
    assert_eq!(e.action, Action::Recovered);
    assert_eq!(e.id, now.snapshot_id);
    assert_history_intact(&store);
}
