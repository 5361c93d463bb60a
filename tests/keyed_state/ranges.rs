//! Iterating a key-group range returns exactly the keys whose key group lies in it.

use std::collections::BTreeSet;

use rockpoint::{
    BackendSettings, KeyGroupRange, KeyedStateBackend, ListStateDescriptor, MapStateDescriptor,
    ValueStateDescriptor, key_group_of,
};

fn key_group(key: &u64) -> u32 {
    key_group_of(&rmp_serde::to_vec(key).unwrap(), 128)
}

#[test]
fn range_iteration_returns_exactly_the_keys_of_the_range() -> Result<(), Box<dyn std::error::Error>>
{
    let dir = tempfile::tempdir()?;
    let backend = KeyedStateBackend::open(
        dir.path(),
        128,
        KeyGroupRange::all(128)?,
        BackendSettings::default(),
    )?;
    let values = backend.state(&ValueStateDescriptor::<u64, u64>::new("values"))?;
    let lists = backend.state(&ListStateDescriptor::<u64, u64>::new("lists"))?;
    let maps = backend.state(&MapStateDescriptor::<u64, u64, u64>::new("maps"))?;
    for key in 0..5_000u64 {
        values.put(&key, &key)?;
        lists.add(&key, &key)?;
        for user_key in 0..(key % 3) {
            maps.put(&key, &user_key, &key)?;
        }
    }
    for (start, end) in [(0, 1), (0, 128), (17, 18), (31, 97), (127, 128), (64, 128)] {
        let range = KeyGroupRange::new(start, end)?;
        let expected: BTreeSet<u64> = (0..5_000)
            .filter(|k| range.contains(key_group(k)))
            .collect();
        let got: BTreeSet<u64> = values.keys(Some(range))?.collect::<Result<_, _>>()?;
        assert_eq!(got, expected, "value keys of {range}");
        let got: BTreeSet<u64> = lists
            .entries(Some(range))?
            .map(|r| r.map(|(k, _)| k))
            .collect::<Result<_, _>>()?;
        assert_eq!(got, expected, "list keys of {range}");
        let expected_maps: BTreeSet<u64> =
            expected.iter().copied().filter(|k| k % 3 != 0).collect();
        let keys: Vec<u64> = maps.keys(Some(range))?.collect::<Result<_, _>>()?;
        assert_eq!(
            keys.len(),
            expected_maps.len(),
            "each map key is listed once"
        );
        assert_eq!(
            keys.into_iter().collect::<BTreeSet<_>>(),
            expected_maps,
            "map keys of {range}"
        );
    }
    Ok(())
}
