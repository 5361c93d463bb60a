//! Typed state operations against raw RocksDB get/put with the same options and value sizes.
//!
//! Each pair runs side by side in one process on the same machine, so their ratio is what to read
//! (typed / raw time). Keys are `u64`, values 100 bytes (`serde_bytes::ByteBuf`, which MessagePack
//! stores as one binary blob). `value_state_vec_u8` shows the cost of a plain `Vec<u8>` value, which
//! serde encodes element by element. The preloaded set is 200k keys.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use rockpoint::{
    BackendSettings, KeyGroupRange, KeyedStateBackend, ListStateDescriptor, MapStateDescriptor,
    ValueStateDescriptor,
};
use rocksdb::{BlockBasedOptions, Cache, DB, DBCompressionType, Options, WriteOptions};
use serde_bytes::ByteBuf;

const PRELOADED: u64 = 200_000;
const VALUE_BYTES: usize = 100;

/// RocksDB with the options a default `BackendSettings` gives a state column family.
fn raw_db(dir: &std::path::Path) -> DB {
    let settings = BackendSettings::default();
    let cache = Cache::new_lru_cache(settings.block_cache_size_bytes);
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(&cache);
    table.set_bloom_filter(10.0, false);
    table.set_cache_index_and_filter_blocks(true);
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.set_write_buffer_size(settings.write_buffer_size_bytes);
    opts.set_max_write_buffer_number(settings.max_write_buffer_number);
    opts.set_target_file_size_base(settings.target_file_size_bytes);
    opts.set_compression_type(DBCompressionType::Lz4);
    opts.set_block_based_table_factory(&table);
    opts.set_max_background_jobs(settings.max_background_jobs);
    DB::open(&opts, dir).expect("raw RocksDB opens")
}

fn mix(i: u64) -> u64 {
    // A cheap bijective scramble so reads and writes do not walk keys in order.
    i.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17) % PRELOADED
}

fn state_ops(c: &mut Criterion) {
    let value = vec![7u8; VALUE_BYTES];
    let raw_dir = tempfile::tempdir().unwrap();
    let raw = raw_db(raw_dir.path());
    let write = WriteOptions::default();
    let typed_dir = tempfile::tempdir().unwrap();
    let backend = KeyedStateBackend::open(
        typed_dir.path(),
        128,
        KeyGroupRange::all(128).unwrap(),
        BackendSettings::default(),
    )
    .unwrap();
    let blob = ByteBuf::from(value.clone());
    let values = backend
        .state(&ValueStateDescriptor::<u64, ByteBuf>::new("values"))
        .unwrap();
    // In a backend of its own, so that the typed backend holds what the raw DB holds.
    let vec_dir = tempfile::tempdir().unwrap();
    let vec_backend = KeyedStateBackend::open(
        vec_dir.path(),
        128,
        KeyGroupRange::all(128).unwrap(),
        BackendSettings::default(),
    )
    .unwrap();
    let vec_values = vec_backend
        .state(&ValueStateDescriptor::<u64, Vec<u8>>::new("vec_values"))
        .unwrap();
    let lists = backend
        .state(&ListStateDescriptor::<u64, ByteBuf>::new("lists"))
        .unwrap();
    let maps = backend
        .state(&MapStateDescriptor::<u64, u32, ByteBuf>::new("maps"))
        .unwrap();
    // A second raw DB keyed by exactly the row keys the typed layer writes (key group ‖ MessagePack
    // key): same bytes, same layout, so the difference is the typed layer's own work.
    let same_dir = tempfile::tempdir().unwrap();
    let raw_same = raw_db(same_dir.path());
    let row_keys: Vec<Vec<u8>> = (0..PRELOADED)
        .map(|i| {
            let encoded = rmp_serde::to_vec(&i).unwrap();
            let mut key = (rockpoint::key_group_of(&encoded, 128) as u16)
                .to_be_bytes()
                .to_vec();
            key.extend_from_slice(&encoded);
            key
        })
        .collect();
    let encoded_blob = rmp_serde::to_vec(&blob).unwrap();
    for i in 0..PRELOADED {
        raw.put_opt(i.to_be_bytes(), &value, &write).unwrap();
        raw_same
            .put_opt(&row_keys[i as usize], &encoded_blob, &write)
            .unwrap();
        values.put(&i, &blob).unwrap();
        vec_values.put(&i, &value).unwrap();
    }

    let mut group = c.benchmark_group("put");
    let mut i = 0u64;
    group.bench_function("raw_rocksdb", |b| {
        b.iter(|| {
            i += 1;
            raw.put_opt(mix(i).to_be_bytes(), &value, &write).unwrap()
        })
    });
    group.bench_function("raw_rocksdb_same_keys", |b| {
        b.iter(|| {
            i += 1;
            raw_same
                .put_opt(&row_keys[mix(i) as usize], &encoded_blob, &write)
                .unwrap()
        })
    });
    group.bench_function("value_state", |b| {
        b.iter(|| {
            i += 1;
            values.put(&mix(i), &blob).unwrap()
        })
    });
    group.bench_function("value_state_vec_u8", |b| {
        b.iter(|| {
            i += 1;
            vec_values.put(&mix(i), &value).unwrap()
        })
    });
    group.bench_function("list_state_add", |b| {
        b.iter(|| {
            i += 1;
            lists.add(&(mix(i) % 1000), &blob).unwrap()
        })
    });
    group.bench_function("map_state_put", |b| {
        b.iter(|| {
            i += 1;
            maps.put(&(mix(i) % 1000), &(i as u32), &blob).unwrap()
        })
    });
    group.finish();

    let mut group = c.benchmark_group("get");
    group.bench_function("raw_rocksdb", |b| {
        b.iter_batched(
            || {
                i += 1;
                mix(i)
            },
            |k| black_box(raw.get_pinned(k.to_be_bytes()).unwrap().map(|v| v.len())),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("raw_rocksdb_same_keys", |b| {
        b.iter_batched(
            || {
                i += 1;
                mix(i)
            },
            |k| {
                black_box(
                    raw_same
                        .get_pinned(&row_keys[k as usize])
                        .unwrap()
                        .map(|v| v.len()),
                )
            },
            BatchSize::SmallInput,
        )
    });
    group.bench_function("value_state", |b| {
        b.iter_batched(
            || {
                i += 1;
                mix(i)
            },
            |k| black_box(values.get(&k).unwrap().map(|v| v.len())),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("value_state_vec_u8", |b| {
        b.iter_batched(
            || {
                i += 1;
                mix(i)
            },
            |k| black_box(vec_values.get(&k).unwrap().map(|v| v.len())),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, state_ops);
criterion_main!(benches);
