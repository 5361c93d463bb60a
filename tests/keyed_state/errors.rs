//! Misuse and damage get the documented errors, never a panic and never a misread.

use std::collections::BTreeSet;

use rockpoint::{
    BackendSettings, ErrorKind, KeyGroupRange, KeyedStateBackend, ListStateDescriptor,
    MapStateDescriptor, ReducingStateDescriptor, StateKind, ValueStateDescriptor, key_group_of,
};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn open_all(dir: &std::path::Path) -> rockpoint::Result<KeyedStateBackend> {
    KeyedStateBackend::open(
        dir,
        128,
        KeyGroupRange::all(128)?,
        BackendSettings::default(),
    )
}

#[test]
fn re_registering_with_another_kind_or_type_is_refused() -> TestResult {
    let dir = tempfile::tempdir()?;
    let backend = open_all(dir.path())?;
    backend.state(&ValueStateDescriptor::<String, u64>::new("counts"))?;

    let err = backend
        .state(&ListStateDescriptor::<String, u64>::new("counts"))
        .err()
        .expect("kind differs");
    assert_eq!(err.kind(), ErrorKind::Invalid);
    assert!(err.to_string().contains("counts"), "{err}");

    let err = backend
        .state(&ValueStateDescriptor::<String, String>::new("counts"))
        .err()
        .expect("value type differs");
    assert_eq!(err.kind(), ErrorKind::Invalid);
    let err = backend
        .state(&ValueStateDescriptor::<u64, u64>::new("counts"))
        .err()
        .expect("key type differs");
    assert_eq!(err.kind(), ErrorKind::Invalid);

    // The same descriptor is fine, also after a reopen, and the refusal survives the reopen too.
    drop(backend);
    let backend = open_all(dir.path())?;
    backend.state(&ValueStateDescriptor::<String, u64>::new("counts"))?;
    let err = backend
        .state(&MapStateDescriptor::<String, u8, u64>::new("counts"))
        .err()
        .expect("kind differs after reopen");
    assert_eq!(err.kind(), ErrorKind::Invalid);
    let states = backend.states();
    assert_eq!(states.len(), 1);
    assert_eq!(states[0].kind, StateKind::Value);
    Ok(())
}

#[test]
fn bad_state_names_are_refused() -> TestResult {
    let dir = tempfile::tempdir()?;
    let backend = open_all(dir.path())?;
    for name in ["", "default", "a/b", "with space", &"x".repeat(201)] {
        let err = backend
            .state(&ValueStateDescriptor::<u8, u8>::named(name))
            .err()
            .expect("name refused");
        assert_eq!(err.kind(), ErrorKind::Invalid, "{name:?}");
    }
    Ok(())
}

#[test]
fn corrupt_bytes_give_a_corruption_error_naming_the_state() -> TestResult {
    const PAIRS: ValueStateDescriptor<String, (u64, String)> = ValueStateDescriptor::new("pairs");
    const LISTS: ListStateDescriptor<String, u64> = ListStateDescriptor::new("lists");
    const MAPS: MapStateDescriptor<String, u32, u64> = MapStateDescriptor::new("maps");
    let dir = tempfile::tempdir()?;
    let key = "victim".to_string();
    {
        let backend = open_all(dir.path())?;
        backend.state(&PAIRS)?.put(&key, &(7, "seven".into()))?;
        backend.state(&LISTS)?.add(&key, &1)?;
        backend.state(&MAPS)?.put(&key, &1, &2)?;
    }
    // Overwrite the stored rows with bytes that are not valid MessagePack for their types.
    {
        let db_dir = dir.path().join("db");
        let cfs = rocksdb::DB::list_cf(&rocksdb::Options::default(), &db_dir)?;
        let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), &db_dir, cfs)?;
        // Row keys per the documented layout: key group (u16 BE) ‖ MessagePack(key) [‖ user key].
        let encoded = rmp_serde::to_vec(&key)?;
        let mut row = (rockpoint::key_group_of(&encoded, 128) as u16)
            .to_be_bytes()
            .to_vec();
        row.extend_from_slice(&encoded);
        let mut map_row = row.clone();
        map_row.extend_from_slice(&rmp_serde::to_vec(&1u32)?);
        for (name, row) in [("pairs", &row), ("lists", &row), ("maps", &map_row)] {
            let cf = db.cf_handle(name).expect("column family exists");
            db.put_cf(&cf, row, [0xc1, 0xff, 0x00])?;
        }
    }
    let backend = open_all(dir.path())?;
    let err = backend.state(&PAIRS)?.get(&key).expect_err("corrupt value");
    assert_eq!(err.kind(), ErrorKind::Corruption);
    assert!(err.to_string().contains("pairs"), "{err}");
    let err = backend.state(&LISTS)?.get(&key).expect_err("corrupt list");
    assert_eq!(err.kind(), ErrorKind::Corruption);
    assert!(err.to_string().contains("lists"), "{err}");
    let maps = backend.state(&MAPS)?;
    let err = maps.get(&key, &1).expect_err("corrupt map value");
    assert_eq!(err.kind(), ErrorKind::Corruption);
    assert!(err.to_string().contains("maps"), "{err}");
    let scan: Vec<_> = maps.all_entries(None)?.collect();
    assert!(matches!(&scan[..], [Err(e)] if e.kind() == ErrorKind::Corruption));
    Ok(())
}

#[test]
fn keys_outside_the_backend_range_are_refused() -> TestResult {
    let dir = tempfile::tempdir()?;
    let range = KeyGroupRange::new(0, 64)?;
    let backend = KeyedStateBackend::open(dir.path(), 128, range, BackendSettings::default())?;
    let state = backend.state(&ValueStateDescriptor::<u64, u64>::new("v"))?;
    let outside = (0u64..)
        .find(|k| key_group_of(&rmp_serde::to_vec(k).unwrap(), 128) >= 64)
        .unwrap();
    let inside = (0u64..)
        .find(|k| key_group_of(&rmp_serde::to_vec(k).unwrap(), 128) < 64)
        .unwrap();
    let err = state.put(&outside, &1).expect_err("outside range");
    assert_eq!(err.kind(), ErrorKind::Invalid);
    assert!(err.to_string().contains("outside"), "{err}");
    state.put(&inside, &1)?;
    assert_eq!(state.get(&inside)?, Some(1));
    Ok(())
}

#[test]
fn reopening_with_another_range_or_parallelism_is_refused() -> TestResult {
    let dir = tempfile::tempdir()?;
    let range = KeyGroupRange::new(0, 64)?;
    drop(KeyedStateBackend::open(
        dir.path(),
        128,
        range,
        BackendSettings::default(),
    )?);
    let other_range = KeyedStateBackend::open(
        dir.path(),
        128,
        KeyGroupRange::new(0, 32)?,
        BackendSettings::default(),
    );
    assert_eq!(
        other_range.err().map(|e| e.kind()),
        Some(ErrorKind::Invalid)
    );
    let other_parallelism =
        KeyedStateBackend::open(dir.path(), 256, range, BackendSettings::default());
    assert_eq!(
        other_parallelism.err().map(|e| e.kind()),
        Some(ErrorKind::Invalid)
    );
    let too_wide = KeyedStateBackend::open(
        tempfile::tempdir()?.path(),
        32,
        range,
        BackendSettings::default(),
    );
    assert_eq!(too_wide.err().map(|e| e.kind()), Some(ErrorKind::Invalid));
    KeyedStateBackend::open(dir.path(), 128, range, BackendSettings::default())?;
    Ok(())
}

#[test]
fn invalid_settings_are_refused() -> TestResult {
    let dir = tempfile::tempdir()?;
    let settings = BackendSettings {
        write_buffer_size_bytes: 10,
        ..BackendSettings::default()
    };
    let err = KeyedStateBackend::open(dir.path(), 128, KeyGroupRange::all(128)?, settings)
        .err()
        .expect("refused");
    assert_eq!(err.kind(), ErrorKind::Invalid);
    assert!(err.to_string().contains("write_buffer_size_bytes"), "{err}");
    let parsed: Result<BackendSettings, _> =
        serde_json::from_str(r#"{"write_bufer_size_bytes": 1}"#);
    assert!(parsed.is_err(), "unknown setting names are refused");
    Ok(())
}

#[test]
fn reopening_brings_back_every_state() -> TestResult {
    const A: ValueStateDescriptor<u32, u32> = ValueStateDescriptor::new("a");
    let dir = tempfile::tempdir()?;
    {
        let backend = open_all(dir.path())?;
        backend.state(&A)?.put(&1, &2)?;
        backend.state(&ListStateDescriptor::<u32, u32>::new("b"))?;
        backend.state(&MapStateDescriptor::<u32, u32, u32>::new("c"))?;
        backend.state(&ReducingStateDescriptor::<u32, u32>::new("d", |x, y| {
            x.max(y)
        }))?;
    }
    let backend = open_all(dir.path())?;
    let names: BTreeSet<String> = backend.states().into_iter().map(|d| d.name).collect();
    assert_eq!(names, ["a", "b", "c", "d"].map(String::from).into());
    assert_eq!(backend.state(&A)?.get(&1)?, Some(2));
    Ok(())
}

/// Two versions of one user type: the tag is how its owner says the second cannot read the first.
mod event {
    #[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    pub struct V1 {
        pub id: u64,
    }
    #[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    pub struct V2 {
        pub id: u64,
        pub at_ms: u64,
    }
    rockpoint::state_type!(V1 = "test.Event/v1", V2 = "test.Event/v2");
}

#[test]
fn re_registering_with_another_type_tag_names_both_tags() -> TestResult {
    const EVENTS_V1: ValueStateDescriptor<String, event::V1> = ValueStateDescriptor::new("events");
    const EVENTS_V2: ValueStateDescriptor<String, event::V2> = ValueStateDescriptor::new("events");
    let dir = tempfile::tempdir()?;
    {
        let backend = open_all(dir.path())?;
        backend
            .state(&EVENTS_V1)?
            .put(&"a".into(), &event::V1 { id: 1 })?;
    }
    let backend = open_all(dir.path())?;
    let err = backend.state(&EVENTS_V2).err().expect("the tag changed");
    assert_eq!(err.kind(), ErrorKind::Invalid);
    let message = err.to_string();
    for part in ["events", "`test.Event/v1`", "`test.Event/v2`", "`string`"] {
        assert!(message.contains(part), "{part} missing from: {message}");
    }
    // A std type's tag changes with the type: `string` -> `u64` is refused naming both.
    let err = backend
        .state(&ValueStateDescriptor::<String, u64>::new("events"))
        .err()
        .expect("value type differs");
    assert!(err.to_string().contains("`u64`"), "{err}");
    assert!(err.to_string().contains("`test.Event/v1`"), "{err}");
    // The stored state is untouched by the refusals.
    assert_eq!(
        backend.state(&EVENTS_V1)?.get(&"a".into())?,
        Some(event::V1 { id: 1 })
    );
    Ok(())
}

#[test]
fn user_type_with_its_own_tag_round_trips() -> TestResult {
    use std::collections::{BTreeMap, HashMap};
    const BY_ID: MapStateDescriptor<String, u64, event::V2> = MapStateDescriptor::new("by_id");
    const INDEX: ValueStateDescriptor<u32, HashMap<String, Vec<event::V1>>> =
        ValueStateDescriptor::new("index");
    let dir = tempfile::tempdir()?;
    let key = "k".to_string();
    let index = HashMap::from([("x".to_string(), vec![event::V1 { id: 7 }])]);
    {
        let backend = open_all(dir.path())?;
        backend
            .state(&BY_ID)?
            .put(&key, &3, &event::V2 { id: 3, at_ms: 9 })?;
        backend.state(&INDEX)?.put(&1, &index)?;
    }
    let backend = open_all(dir.path())?;
    assert_eq!(
        backend.state(&BY_ID)?.get(&key, &3)?,
        Some(event::V2 { id: 3, at_ms: 9 })
    );
    assert_eq!(backend.state(&INDEX)?.get(&1)?, Some(index.clone()));
    // `HashMap` and `BTreeMap` share the tag `map<…>` (same encoding), so either reads the state.
    let as_btree = ValueStateDescriptor::<u32, BTreeMap<String, Vec<event::V1>>>::new("index");
    assert_eq!(
        backend.state(&as_btree)?.get(&1)?,
        Some(index.into_iter().collect())
    );
    let recorded: Vec<_> = backend
        .states()
        .into_iter()
        .map(|s| (s.name, s.key_tag, s.user_key_tag, s.value_tag))
        .collect();
    assert_eq!(
        recorded,
        [
            (
                "by_id".to_string(),
                "string".to_string(),
                Some("u64".to_string()),
                "test.Event/v2".to_string()
            ),
            (
                "index".to_string(),
                "u32".to_string(),
                None,
                "map<string,vec<test.Event/v1>>".to_string()
            ),
        ]
    );
    Ok(())
}

/// The state record as rockpoint wrote it before type tags: Rust type names and no format marker.
#[derive(serde::Serialize)]
struct RecordOfRustTypeNames {
    name: String,
    kind: StateKind,
    key_type: String,
    value_type: String,
    user_key_type: Option<String>,
}

#[test]
fn state_recorded_by_rust_type_names_is_refused_naming_it() -> TestResult {
    let dir = tempfile::tempdir()?;
    {
        let backend = open_all(dir.path())?;
        backend.state(&ValueStateDescriptor::<String, u64>::new("fresh"))?;
        let old = RecordOfRustTypeNames {
            name: "counts".into(),
            kind: StateKind::Value,
            key_type: "alloc::string::String".into(),
            value_type: "u64".into(),
            user_key_type: None,
        };
        // Where and how the older version stored it: default column family, compact MessagePack.
        backend
            .rocksdb()
            .put(b"rockpoint/state/counts", rmp_serde::to_vec(&old)?)?;
    }
    let err = open_all(dir.path())
        .err()
        .expect("the old record is refused");
    assert_eq!(err.kind(), ErrorKind::Invalid);
    let message = err.to_string();
    for part in [
        "`counts`",
        "older rockpoint",
        "Rust type names",
        "alloc::string::String",
    ] {
        assert!(message.contains(part), "{part} missing from: {message}");
    }
    Ok(())
}

/// A checkpoint taken by the older version still reads (so it can be listed and collected), but
/// restoring it is refused before anything is downloaded, naming the state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_recorded_by_rust_type_names_is_refused_before_download() -> TestResult {
    use rockpoint::format::StateInfoFormat;
    use rockpoint::store::WriteMode;
    use rockpoint::{
        CheckpointCoordinator, CheckpointMetadata, CheckpointSettings, LocalStore, RestoreSource,
        RestoreTarget, Store,
    };
    let dir = tempfile::tempdir()?;
    let store: std::sync::Arc<dyn Store> =
        std::sync::Arc::new(LocalStore::new(dir.path().join("root"))?);
    let backend = open_all(&dir.path().join("backend"))?;
    backend
        .state(&ValueStateDescriptor::<String, u64>::new("counts"))?
        .put(&"a".into(), &1)?;
    let coordinator =
        CheckpointCoordinator::open(store.clone(), "old", CheckpointSettings::default()).await?;
    let path = coordinator.checkpoint(&[&backend]).await?.path();

    // Rewrite its metadata as the older version wrote it, in the documented envelope.
    let sealed = store.get(&path).await?;
    let mut metadata: CheckpointMetadata = rmp_serde::from_slice(&sealed[52..])?;
    let state = &mut metadata.backends[0].states[0];
    state.format = StateInfoFormat::RustTypeNames;
    state.key_tag = "alloc::string::String".into();
    let body = rmp_serde::to_vec_named(&metadata)?;
    let mut resealed = sealed[..12].to_vec();
    resealed.extend_from_slice(&(body.len() as u64).to_le_bytes());
    resealed.extend_from_slice(blake3::hash(&body).as_bytes());
    resealed.extend_from_slice(&body);
    store.delete(&path).await?;
    store
        .put(&path, resealed.into(), WriteMode::CreateOnly)
        .await?;

    let source = RestoreSource::Metadata(path);
    let (_, read) = rockpoint::restore::read_metadata(&*store, &source).await?;
    assert_eq!(read, metadata, "the old record reads as written");
    let target = RestoreTarget {
        dir: dir.path().join("restored"),
        key_groups: KeyGroupRange::all(128)?,
        settings: BackendSettings::default(),
    };
    let err = rockpoint::restore_backend(&*store, &source, &target, 2, None)
        .await
        .err()
        .expect("restoring the old checkpoint is refused");
    assert_eq!(err.kind(), ErrorKind::Invalid);
    let message = err.to_string();
    for part in [
        "`counts`",
        "older rockpoint",
        "Rust type names",
        "checkpoint",
    ] {
        assert!(message.contains(part), "{part} missing from: {message}");
    }
    assert!(!target.dir.exists(), "nothing was downloaded");
    Ok(())
}
