//! Misuse and damage get the documented errors, never a panic and never a misread.

use std::collections::BTreeSet;

use rockpoint::{
    BackendSettings, ErrorKind, KeyGroupRange, KeyedStateBackend, StateKind, key_group_of,
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
    backend.value_state::<String, u64>("counts")?;

    let err = backend
        .list_state::<String, u64>("counts")
        .err()
        .expect("kind differs");
    assert_eq!(err.kind(), ErrorKind::Invalid);
    assert!(err.to_string().contains("counts"), "{err}");

    let err = backend
        .value_state::<String, String>("counts")
        .err()
        .expect("value type differs");
    assert_eq!(err.kind(), ErrorKind::Invalid);
    let err = backend
        .value_state::<u64, u64>("counts")
        .err()
        .expect("key type differs");
    assert_eq!(err.kind(), ErrorKind::Invalid);

    // The same descriptor is fine, also after a reopen, and the refusal survives the reopen too.
    drop(backend);
    let backend = open_all(dir.path())?;
    backend.value_state::<String, u64>("counts")?;
    let err = backend
        .map_state::<String, u8, u64>("counts")
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
            .value_state::<u8, u8>(name)
            .err()
            .expect("name refused");
        assert_eq!(err.kind(), ErrorKind::Invalid, "{name:?}");
    }
    Ok(())
}

#[test]
fn corrupt_bytes_give_a_corruption_error_naming_the_state() -> TestResult {
    let dir = tempfile::tempdir()?;
    let key = "victim".to_string();
    {
        let backend = open_all(dir.path())?;
        backend
            .value_state::<String, (u64, String)>("pairs")?
            .put(&key, &(7, "seven".into()))?;
        backend.list_state::<String, u64>("lists")?.add(&key, &1)?;
        backend
            .map_state::<String, u32, u64>("maps")?
            .put(&key, &1, &2)?;
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
    let err = backend
        .value_state::<String, (u64, String)>("pairs")?
        .get(&key)
        .expect_err("corrupt value");
    assert_eq!(err.kind(), ErrorKind::Corruption);
    assert!(err.to_string().contains("pairs"), "{err}");
    let err = backend
        .list_state::<String, u64>("lists")?
        .get(&key)
        .expect_err("corrupt list");
    assert_eq!(err.kind(), ErrorKind::Corruption);
    assert!(err.to_string().contains("lists"), "{err}");
    let maps = backend.map_state::<String, u32, u64>("maps")?;
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
    let state = backend.value_state::<u64, u64>("v")?;
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
    let dir = tempfile::tempdir()?;
    {
        let backend = open_all(dir.path())?;
        backend.value_state::<u32, u32>("a")?.put(&1, &2)?;
        backend.list_state::<u32, u32>("b")?;
        backend.map_state::<u32, u32, u32>("c")?;
        backend.reducing_state::<u32, u32, _>("d", |x, y| x.max(y))?;
    }
    let backend = open_all(dir.path())?;
    let names: BTreeSet<String> = backend.states().into_iter().map(|d| d.name).collect();
    assert_eq!(names, ["a", "b", "c", "d"].map(String::from).into());
    assert_eq!(backend.value_state::<u32, u32>("a")?.get(&1)?, Some(2));
    Ok(())
}
