//! Property tests: random operation sequences on each state kind, checked against an in-memory model
//! after every step and compared as whole states (full scans), with the backend closed and reopened
//! at random points in the sequence.

use std::collections::BTreeMap;
use std::path::Path;

use proptest::prelude::*;
use rockpoint::{BackendSettings, KeyGroupRange, KeyedStateBackend, WalMode};

const MAX_PARALLELISM: u32 = 128;

fn settings(wal: WalMode) -> BackendSettings {
    BackendSettings {
        // Small memtables so that sequences flush and compact, not only hit the memtable.
        write_buffer_size_bytes: 64 << 10,
        wal,
        ..BackendSettings::default()
    }
}

fn open(dir: &Path, wal: WalMode) -> KeyedStateBackend {
    KeyedStateBackend::open(
        dir,
        MAX_PARALLELISM,
        KeyGroupRange::all(MAX_PARALLELISM).unwrap(),
        settings(wal),
    )
    .expect("backend opens")
}

fn wal_mode() -> impl Strategy<Value = WalMode> {
    prop_oneof![Just(WalMode::Enabled), Just(WalMode::Disabled)]
}

fn key() -> impl Strategy<Value = String> {
    (0u32..40).prop_map(|n| format!("key-{n}"))
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 24,
        ..ProptestConfig::default()
    }
}

#[derive(Clone, Debug)]
enum ValueOp {
    Put(String, Vec<u8>),
    Delete(String),
    Reopen,
}

fn value_op() -> impl Strategy<Value = ValueOp> {
    prop_oneof![
        6 => (key(), proptest::collection::vec(any::<u8>(), 0..300)).prop_map(|(k, v)| ValueOp::Put(k, v)),
        2 => key().prop_map(ValueOp::Delete),
        1 => Just(ValueOp::Reopen),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn value_state_matches_model(ops in proptest::collection::vec(value_op(), 1..120), wal in wal_mode()) {
        let dir = tempfile::tempdir().unwrap();
        let mut backend = open(dir.path(), wal);
        const VALUES: rockpoint::ValueStateDescriptor<String, Vec<u8>> = rockpoint::ValueStateDescriptor::new("values");
        let mut state = backend.state(&VALUES).unwrap();
        let mut model: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        for op in ops {
            match op {
                ValueOp::Put(k, v) => {
                    state.put(&k, &v).unwrap();
                    model.insert(k, v);
                }
                ValueOp::Delete(k) => {
                    state.clear(&k).unwrap();
                    model.remove(&k);
                }
                ValueOp::Reopen => {
                    drop(state);
                    drop(backend);
                    backend = open(dir.path(), wal);
                    state = backend.state(&VALUES).unwrap();
                }
            }
            for k in model.keys().take(3) {
                prop_assert_eq!(state.get(k).unwrap(), model.get(k).cloned());
            }
        }
        let scanned: BTreeMap<String, Vec<u8>> = state.entries(None).unwrap().map(Result::unwrap).collect();
        prop_assert_eq!(&scanned, &model);
        let keys: Vec<String> = state.keys(None).unwrap().map(Result::unwrap).collect();
        prop_assert_eq!(keys.len(), model.len());
    }
}

#[derive(Clone, Debug)]
enum ListOp {
    Add(String, i32),
    AddAll(String, Vec<i32>),
    Update(String, Vec<i32>),
    Clear(String),
    Reopen,
}

fn list_op() -> impl Strategy<Value = ListOp> {
    let items = || proptest::collection::vec(any::<i32>(), 0..6);
    prop_oneof![
        6 => (key(), any::<i32>()).prop_map(|(k, x)| ListOp::Add(k, x)),
        2 => (key(), items()).prop_map(|(k, xs)| ListOp::AddAll(k, xs)),
        2 => (key(), items()).prop_map(|(k, xs)| ListOp::Update(k, xs)),
        1 => key().prop_map(ListOp::Clear),
        1 => Just(ListOp::Reopen),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn list_state_matches_model(ops in proptest::collection::vec(list_op(), 1..150), wal in wal_mode()) {
        let dir = tempfile::tempdir().unwrap();
        let mut backend = open(dir.path(), wal);
        const LISTS: rockpoint::ListStateDescriptor<String, i32> = rockpoint::ListStateDescriptor::new("lists");
        let mut state = backend.state(&LISTS).unwrap();
        let mut model: BTreeMap<String, Vec<i32>> = BTreeMap::new();
        for op in ops {
            match op {
                ListOp::Add(k, x) => {
                    state.add(&k, &x).unwrap();
                    model.entry(k).or_default().push(x);
                }
                ListOp::AddAll(k, xs) => {
                    state.add_all(&k, &xs).unwrap();
                    if !xs.is_empty() {
                        model.entry(k).or_default().extend(xs);
                    }
                }
                ListOp::Update(k, xs) => {
                    state.put(&k, &xs).unwrap();
                    if xs.is_empty() { model.remove(&k); } else { model.insert(k, xs); }
                }
                ListOp::Clear(k) => {
                    state.clear(&k).unwrap();
                    model.remove(&k);
                }
                ListOp::Reopen => {
                    drop(state);
                    drop(backend);
                    backend = open(dir.path(), wal);
                    state = backend.state(&LISTS).unwrap();
                }
            }
        }
        for (k, expected) in &model {
            prop_assert_eq!(&state.get(k).unwrap(), expected);
        }
        let scanned: BTreeMap<String, Vec<i32>> = state.entries(None).unwrap().map(Result::unwrap).collect();
        prop_assert_eq!(&scanned, &model);
    }
}

#[derive(Clone, Debug)]
enum MapOp {
    Put(String, u16, String),
    Remove(String, u16),
    Clear(String),
    Reopen,
}

fn map_op() -> impl Strategy<Value = MapOp> {
    prop_oneof![
        6 => (key(), 0u16..30, "[a-z]{0,12}").prop_map(|(k, uk, v)| MapOp::Put(k, uk, v)),
        3 => (key(), 0u16..30).prop_map(|(k, uk)| MapOp::Remove(k, uk)),
        1 => key().prop_map(MapOp::Clear),
        1 => Just(MapOp::Reopen),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn map_state_matches_model(ops in proptest::collection::vec(map_op(), 1..150), wal in wal_mode()) {
        let dir = tempfile::tempdir().unwrap();
        let mut backend = open(dir.path(), wal);
        const MAPS: rockpoint::MapStateDescriptor<String, u16, String> = rockpoint::MapStateDescriptor::new("maps");
        let mut state = backend.state(&MAPS).unwrap();
        let mut model: BTreeMap<String, BTreeMap<u16, String>> = BTreeMap::new();
        for op in ops {
            match op {
                MapOp::Put(k, uk, v) => {
                    state.put(&k, &uk, &v).unwrap();
                    model.entry(k).or_default().insert(uk, v);
                }
                MapOp::Remove(k, uk) => {
                    state.remove(&k, &uk).unwrap();
                    if let Some(m) = model.get_mut(&k) {
                        m.remove(&uk);
                        if m.is_empty() { model.remove(&k); }
                    }
                }
                MapOp::Clear(k) => {
                    state.clear(&k).unwrap();
                    model.remove(&k);
                }
                MapOp::Reopen => {
                    drop(state);
                    drop(backend);
                    backend = open(dir.path(), wal);
                    state = backend.state(&MAPS).unwrap();
                }
            }
        }
        for n in 0..40u32 {
            let k = format!("key-{n}");
            let expected = model.get(&k).cloned().unwrap_or_default();
            let entries: BTreeMap<u16, String> = state.entries(&k).unwrap().map(Result::unwrap).collect();
            prop_assert_eq!(&entries, &expected);
            prop_assert_eq!(state.is_empty(&k).unwrap(), expected.is_empty());
            let user_keys: Vec<u16> = state.user_keys(&k).unwrap().map(Result::unwrap).collect();
            prop_assert_eq!(user_keys.len(), expected.len());
            let values: Vec<String> = state.values(&k).unwrap().map(Result::unwrap).collect();
            prop_assert_eq!(values.len(), expected.len());
            for uk in 0..30u16 {
                prop_assert_eq!(state.contains(&k, &uk).unwrap(), expected.contains_key(&uk));
                prop_assert_eq!(state.get(&k, &uk).unwrap(), expected.get(&uk).cloned());
            }
        }
        let mut scanned: BTreeMap<String, BTreeMap<u16, String>> = BTreeMap::new();
        for row in state.all_entries(None).unwrap() {
            let (k, uk, v) = row.unwrap();
            scanned.entry(k).or_default().insert(uk, v);
        }
        prop_assert_eq!(&scanned, &model);
        let keys: Vec<String> = state.keys(None).unwrap().map(Result::unwrap).collect();
        prop_assert_eq!(keys.len(), model.len(), "one key per non-empty map");
    }
}

#[derive(Clone, Debug)]
enum ReduceOp {
    Add(String, i64),
    Clear(String),
    Reopen,
}

fn reduce_op() -> impl Strategy<Value = ReduceOp> {
    prop_oneof![
        8 => (key(), -1000i64..1000).prop_map(|(k, x)| ReduceOp::Add(k, x)),
        1 => key().prop_map(ReduceOp::Clear),
        1 => Just(ReduceOp::Reopen),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn reducing_state_matches_model(ops in proptest::collection::vec(reduce_op(), 1..150), wal in wal_mode()) {
        let dir = tempfile::tempdir().unwrap();
        let mut backend = open(dir.path(), wal);
        const SUMS: rockpoint::ReducingStateDescriptor<String, i64> = rockpoint::ReducingStateDescriptor::new("sums", |a, b| a + b);
        let mut state = backend.state(&SUMS).unwrap();
        let mut model: BTreeMap<String, i64> = BTreeMap::new();
        for op in ops {
            match op {
                ReduceOp::Add(k, x) => {
                    state.add(&k, x).unwrap();
                    *model.entry(k).or_default() += x;
                }
                ReduceOp::Clear(k) => {
                    state.clear(&k).unwrap();
                    model.remove(&k);
                }
                ReduceOp::Reopen => {
                    drop(state);
                    drop(backend);
                    backend = open(dir.path(), wal);
                    state = backend.state(&SUMS).unwrap();
                }
            }
        }
        let scanned: BTreeMap<String, i64> = state.entries(None).unwrap().map(Result::unwrap).collect();
        prop_assert_eq!(&scanned, &model);
    }
}
