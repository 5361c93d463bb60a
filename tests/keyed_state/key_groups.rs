//! The key-group mapping is part of the on-disk format. These vectors were computed independently
//! (Python `blake3` and `msgpack` packages) from the documented definition; if this test fails, the
//! mapping changed and every existing checkpoint would put keys in the wrong key group.

use rockpoint::{KeyGroupRange, key_group_of};

fn msgpack<T: serde::Serialize>(value: &T) -> Vec<u8> {
    rmp_serde::to_vec(value).expect("encodes")
}

#[test]
fn key_group_vectors_are_pinned() {
    // (serialized key in hex, key group for 128, for 32768, for 7 or 1)
    let strings: [(&str, &str, u32, u32); 4] = [
        ("hello", "a568656c6c6f", 49, 12593),
        ("rock", "a4726f636b", 106, 27250),
        ("", "a0", 17, 4583),
        ("key-42", "a66b65792d3432", 111, 28558),
    ];
    for (key, hex, kg128, kg32768) in strings {
        let bytes = msgpack(&key);
        assert_eq!(to_hex(&bytes), hex, "MessagePack encoding of {key:?}");
        assert_eq!(
            key_group_of(&bytes, 128),
            kg128,
            "{key:?} with max_parallelism 128"
        );
        assert_eq!(
            key_group_of(&bytes, 32768),
            kg32768,
            "{key:?} with max_parallelism 32768"
        );
        assert_eq!(key_group_of(&bytes, 1), 0, "{key:?} with max_parallelism 1");
    }
    let integers: [(u64, &str, u32, u32, u32); 4] = [
        (0, "00", 120, 30896, 6),
        (1, "01", 112, 28729, 6),
        (42, "2a", 0, 201, 0),
        (1 << 40, "cf0000010000000000", 17, 4469, 0),
    ];
    for (key, hex, kg128, kg32768, kg7) in integers {
        let bytes = msgpack(&key);
        assert_eq!(to_hex(&bytes), hex, "MessagePack encoding of {key}");
        assert_eq!(
            key_group_of(&bytes, 128),
            kg128,
            "{key} with max_parallelism 128"
        );
        assert_eq!(
            key_group_of(&bytes, 32768),
            kg32768,
            "{key} with max_parallelism 32768"
        );
        assert_eq!(key_group_of(&bytes, 7), kg7, "{key} with max_parallelism 7");
    }
}

#[test]
fn key_groups_spread_evenly() {
    let mut counts = [0u32; 128];
    for i in 0..128_000u64 {
        counts[key_group_of(&msgpack(&i), 128) as usize] += 1;
    }
    // 1000 expected per group; a binomial spread stays well within ±15%.
    for (group, count) in counts.iter().enumerate() {
        assert!(
            (850..=1150).contains(count),
            "key group {group} got {count} of 128000 keys"
        );
    }
}

#[test]
fn operator_ranges_partition_all_key_groups() -> rockpoint::Result<()> {
    for (max_parallelism, parallelism) in [(128, 4), (128, 3), (10, 10), (32768, 7), (7, 1)] {
        let mut next = 0;
        for index in 0..parallelism {
            let range = KeyGroupRange::for_operator(max_parallelism, parallelism, index)?;
            assert_eq!(
                range.start(),
                next,
                "ranges of {parallelism} operators are contiguous"
            );
            let even = max_parallelism / parallelism;
            assert!(
                range.len() == even || range.len() == even + 1,
                "uneven split {range}"
            );
            next = range.end();
        }
        assert_eq!(next, max_parallelism, "ranges cover every key group");
    }
    assert_eq!(
        KeyGroupRange::for_operator(128, 4, 1)?,
        KeyGroupRange::new(32, 64)?
    );
    Ok(())
}

#[test]
fn invalid_ranges_are_refused() {
    assert!(KeyGroupRange::new(5, 5).is_err());
    assert!(KeyGroupRange::new(6, 5).is_err());
    assert!(KeyGroupRange::new(0, 32769).is_err());
    assert!(KeyGroupRange::all(0).is_err());
    assert!(KeyGroupRange::for_operator(4, 5, 0).is_err());
    assert!(KeyGroupRange::for_operator(4, 2, 2).is_err());
    let hostile: Result<KeyGroupRange, _> = rmp_serde::from_slice(&msgpack(&(9u32, 3u32)));
    assert!(hostile.is_err(), "deserializing validates the range");
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
