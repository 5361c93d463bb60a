//! What is recorded about a state, the bottom of the format: its name, kind and the type tags of its
//! parts ([`StateInfo`]). Kept in every backend directory (default column family, key
//! `rockpoint/state/<name>`) and in every checkpoint's metadata.
//!
//! A record leads with a format marker, so that a record of another version is recognised rather
//! than misread. Since type tags (marker 2) a record is, in MessagePack arrays (backend directory)
//! or maps (metadata, JSON): `[2, name, kind, key_tag, value_tag, user_key_tag]` /
//! `{format: 2, name, kind, key_tag, value_tag, user_key_tag}`. Before, it had no marker and
//! recorded Rust type names: `[name, kind, key_type, value_type, user_key_type]` /
//! `{name, kind, key_type, value_type, user_key_type}`. Both decode — old checkpoints stay listable
//! and collectable — but a backend refuses to open with an old record: which tags its Rust type names
//! stand for cannot be known, and guessing could misread the state.

use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeStruct, Serializer};
use serde::{Deserialize, Serialize};

/// The marker of records with type tags.
const TYPE_TAGS_FORMAT: u32 = 2;

/// The kind of a registered state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StateKind {
    /// One value per key ([`ValueState`](crate::ValueState)).
    Value,
    /// An append-friendly list per key ([`ListState`](crate::ListState)).
    List,
    /// A map per key, each entry its own row ([`MapState`](crate::MapState)).
    Map,
    /// One value per key folded by a user function ([`ReducingState`](crate::ReducingState)).
    Reducing,
}

/// How a [`StateInfo`] identifies the types of a state (the format marker of its record).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StateInfoFormat {
    /// Written by a rockpoint older than type tags: the tag fields hold Rust type names, which are not
    /// stable across compiler versions. Such records are read from checkpoint metadata, but a
    /// backend holding one refuses to open.
    RustTypeNames,
    /// Stable type tags ([`StateType::type_tag`](crate::StateType::type_tag)).
    TypeTags,
}

/// What is recorded about a registered state: its name, kind and the type tags of its parts
/// (see [`StateType`](crate::StateType)). Returned by
/// [`KeyedStateBackend::states`](crate::KeyedStateBackend::states) and listed in
/// [`BackendHandle::states`](crate::BackendHandle).
///
/// Registering a state again with another kind or tag fails with
/// [`ErrorKind::Invalid`](crate::ErrorKind) naming both, rather than misreading stored bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateInfo {
    /// The state's name, also the name of its column family.
    pub name: String,
    /// Its kind.
    pub kind: StateKind,
    /// Tag of the (partitioning) key type.
    pub key_tag: String,
    /// Tag of the value type (for lists: of an element; for maps: of an entry's value).
    pub value_tag: String,
    /// For map state: tag of the type of an entry's user key.
    pub user_key_tag: Option<String>,
    /// How the tags identify types: always [`StateInfoFormat::TypeTags`] for states this version
    /// registers.
    pub format: StateInfoFormat,
}

impl StateInfo {
    /// The record of a state registered by this version.
    pub(crate) fn new(
        name: &str,
        kind: StateKind,
        key_tag: String,
        value_tag: String,
        user_key_tag: Option<String>,
    ) -> Self {
        StateInfo {
            name: name.to_owned(),
            kind,
            key_tag,
            value_tag,
            user_key_tag,
            format: StateInfoFormat::TypeTags,
        }
    }

    /// Kind and tags, for messages: ``Map state of `string` -> {`u32` -> `u64`}``.
    pub(crate) fn describe(&self) -> String {
        match &self.user_key_tag {
            Some(user_key) => format!(
                "{:?} state of `{}` -> {{`{}` -> `{}`}}",
                self.kind, self.key_tag, user_key, self.value_tag
            ),
            None => format!(
                "{:?} state of `{}` -> `{}`",
                self.kind, self.key_tag, self.value_tag
            ),
        }
    }
}

impl Serialize for StateInfo {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.format {
            StateInfoFormat::TypeTags => {
                let mut record = serializer.serialize_struct("StateInfo", 6)?;
                record.serialize_field("format", &TYPE_TAGS_FORMAT)?;
                record.serialize_field("name", &self.name)?;
                record.serialize_field("kind", &self.kind)?;
                record.serialize_field("key_tag", &self.key_tag)?;
                record.serialize_field("value_tag", &self.value_tag)?;
                record.serialize_field("user_key_tag", &self.user_key_tag)?;
                record.end()
            }
            // Written back exactly as the older version wrote it.
            StateInfoFormat::RustTypeNames => {
                let mut record = serializer.serialize_struct("StateDescriptor", 5)?;
                record.serialize_field("name", &self.name)?;
                record.serialize_field("kind", &self.kind)?;
                record.serialize_field("key_type", &self.key_tag)?;
                record.serialize_field("value_type", &self.value_tag)?;
                record.serialize_field("user_key_type", &self.user_key_tag)?;
                record.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for StateInfo {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(RecordVisitor)
    }
}

struct RecordVisitor;

/// The first element of an array record: the marker, or (in an old record) the state's name.
enum Leading {
    Format(u64),
    Name(String),
}

impl<'de> Deserialize<'de> for Leading {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct LeadingVisitor;
        impl Visitor<'_> for LeadingVisitor {
            type Value = Leading;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a format marker or a state name")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Leading, E> {
                Ok(Leading::Format(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Leading, E> {
                Ok(Leading::Name(v.to_owned()))
            }
        }
        deserializer.deserialize_any(LeadingVisitor)
    }
}

/// A field name of a map record, of either format.
enum Field {
    Format,
    Name,
    Kind,
    KeyTag,
    ValueTag,
    UserKeyTag,
    KeyType,
    ValueType,
    UserKeyType,
    Other,
}

impl<'de> Deserialize<'de> for Field {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldVisitor;
        impl Visitor<'_> for FieldVisitor {
            type Value = Field;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Field, E> {
                Ok(match v {
                    "format" => Field::Format,
                    "name" => Field::Name,
                    "kind" => Field::Kind,
                    "key_tag" => Field::KeyTag,
                    "value_tag" => Field::ValueTag,
                    "user_key_tag" => Field::UserKeyTag,
                    "key_type" => Field::KeyType,
                    "value_type" => Field::ValueType,
                    "user_key_type" => Field::UserKeyType,
                    _ => Field::Other,
                })
            }
        }
        deserializer.deserialize_identifier(FieldVisitor)
    }
}

fn unknown_format<E: de::Error>(format: u64) -> E {
    E::custom(format_args!(
        "state record format {format} is not one this rockpoint reads \
         (format {TYPE_TAGS_FORMAT}, or the unmarked records of older versions)"
    ))
}

fn next<'de, A: SeqAccess<'de>, T: Deserialize<'de>>(
    seq: &mut A,
    index: usize,
    visitor: &RecordVisitor,
) -> Result<T, A::Error> {
    seq.next_element()?
        .ok_or_else(|| de::Error::invalid_length(index, visitor))
}

impl<'de> Visitor<'de> for RecordVisitor {
    type Value = StateInfo;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a state record")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<StateInfo, A::Error> {
        let (name, format) = match next(&mut seq, 0, &self)? {
            Leading::Format(TYPE_TAGS_FORMAT_U64) => {
                (next(&mut seq, 1, &self)?, StateInfoFormat::TypeTags)
            }
            Leading::Format(other) => return Err(unknown_format(other)),
            Leading::Name(name) => (name, StateInfoFormat::RustTypeNames),
        };
        let offset = usize::from(format == StateInfoFormat::TypeTags);
        let info = StateInfo {
            name,
            kind: next(&mut seq, 1 + offset, &self)?,
            key_tag: next(&mut seq, 2 + offset, &self)?,
            value_tag: next(&mut seq, 3 + offset, &self)?,
            user_key_tag: next(&mut seq, 4 + offset, &self)?,
            format,
        };
        if seq.next_element::<IgnoredAny>()?.is_some() {
            return Err(de::Error::invalid_length(6 + offset, &self));
        }
        Ok(info)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<StateInfo, A::Error> {
        fn set<'de, A: MapAccess<'de>, T: Deserialize<'de>>(
            map: &mut A,
            slot: &mut Option<T>,
            field: &'static str,
        ) -> Result<(), A::Error> {
            if slot.is_some() {
                return Err(de::Error::duplicate_field(field));
            }
            *slot = Some(map.next_value()?);
            Ok(())
        }
        let (mut format, mut name, mut kind) = (None::<u64>, None, None);
        let (mut key_tag, mut value_tag, mut user_key_tag) = (None, None, None::<Option<String>>);
        let (mut key_type, mut value_type, mut user_key_type) =
            (None, None, None::<Option<String>>);
        while let Some(field) = map.next_key::<Field>()? {
            match field {
                Field::Format => set(&mut map, &mut format, "format")?,
                Field::Name => set(&mut map, &mut name, "name")?,
                Field::Kind => set(&mut map, &mut kind, "kind")?,
                Field::KeyTag => set(&mut map, &mut key_tag, "key_tag")?,
                Field::ValueTag => set(&mut map, &mut value_tag, "value_tag")?,
                Field::UserKeyTag => set(&mut map, &mut user_key_tag, "user_key_tag")?,
                Field::KeyType => set(&mut map, &mut key_type, "key_type")?,
                Field::ValueType => set(&mut map, &mut value_type, "value_type")?,
                Field::UserKeyType => set(&mut map, &mut user_key_type, "user_key_type")?,
                Field::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let (format, (key, key_field), (value, value_field), user_key) = match format {
            Some(TYPE_TAGS_FORMAT_U64) => (
                StateInfoFormat::TypeTags,
                (key_tag, "key_tag"),
                (value_tag, "value_tag"),
                user_key_tag,
            ),
            Some(other) => return Err(unknown_format(other)),
            None => (
                StateInfoFormat::RustTypeNames,
                (key_type, "key_type"),
                (value_type, "value_type"),
                user_key_type,
            ),
        };
        Ok(StateInfo {
            name: name.ok_or_else(|| de::Error::missing_field("name"))?,
            kind: kind.ok_or_else(|| de::Error::missing_field("kind"))?,
            key_tag: key.ok_or_else(|| de::Error::missing_field(key_field))?,
            value_tag: value.ok_or_else(|| de::Error::missing_field(value_field))?,
            user_key_tag: user_key.flatten(),
            format,
        })
    }
}

const TYPE_TAGS_FORMAT_U64: u64 = TYPE_TAGS_FORMAT as u64;

#[cfg(test)]
mod tests {
    use super::*;

    /// The record as the version before type tags wrote it.
    #[derive(Serialize)]
    struct OldRecord {
        name: String,
        kind: StateKind,
        key_type: String,
        value_type: String,
        user_key_type: Option<String>,
    }

    fn old_record() -> OldRecord {
        OldRecord {
            name: "counts".into(),
            kind: StateKind::Map,
            key_type: "alloc::string::String".into(),
            value_type: "u64".into(),
            user_key_type: Some("u8".into()),
        }
    }

    fn info() -> StateInfo {
        StateInfo::new(
            "counts",
            StateKind::Map,
            "string".into(),
            "u64".into(),
            Some("u8".into()),
        )
    }

    #[test]
    fn records_round_trip_as_arrays_maps_and_json() {
        let mut legacy = info();
        legacy.format = StateInfoFormat::RustTypeNames;
        legacy.key_tag = "alloc::string::String".into();
        for record in [info(), legacy] {
            let compact = rmp_serde::to_vec(&record).unwrap();
            assert_eq!(
                rmp_serde::from_slice::<StateInfo>(&compact).unwrap(),
                record
            );
            let named = rmp_serde::to_vec_named(&record).unwrap();
            assert_eq!(rmp_serde::from_slice::<StateInfo>(&named).unwrap(), record);
            let json = serde_json::to_string(&record).unwrap();
            assert_eq!(serde_json::from_str::<StateInfo>(&json).unwrap(), record);
        }
        let json = serde_json::to_value(info()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"format": 2, "name": "counts", "kind": "map", "key_tag": "string",
                "value_tag": "u64", "user_key_tag": "u8"})
        );
    }

    #[test]
    fn records_of_the_version_before_tags_are_recognised() {
        for bytes in [
            rmp_serde::to_vec(&old_record()).unwrap(),
            rmp_serde::to_vec_named(&old_record()).unwrap(),
        ] {
            let decoded: StateInfo = rmp_serde::from_slice(&bytes).unwrap();
            assert_eq!(decoded.format, StateInfoFormat::RustTypeNames);
            assert_eq!(decoded.name, "counts");
            assert_eq!(decoded.key_tag, "alloc::string::String");
            assert_eq!(decoded.user_key_tag.as_deref(), Some("u8"));
            // Written back byte for byte as the older version wrote it.
            let again = if bytes == rmp_serde::to_vec(&old_record()).unwrap() {
                rmp_serde::to_vec(&decoded).unwrap()
            } else {
                rmp_serde::to_vec_named(&decoded).unwrap()
            };
            assert_eq!(again, bytes);
        }
    }

    #[test]
    fn unknown_formats_and_damaged_records_are_errors() {
        let mut fields = rmp_serde::to_vec(&(3u32, "counts", "value", "string", "u64")).unwrap();
        let err = rmp_serde::from_slice::<StateInfo>(&fields).unwrap_err();
        assert!(err.to_string().contains("format 3"), "{err}");
        fields = rmp_serde::to_vec(&(2u32, "counts", "value", "string")).unwrap();
        assert!(rmp_serde::from_slice::<StateInfo>(&fields).is_err());
        fields = rmp_serde::to_vec(&(2u32, "counts", "value", "string", "u64", None::<u8>, 1u8))
            .unwrap();
        assert!(rmp_serde::from_slice::<StateInfo>(&fields).is_err());
        let missing_tag =
            serde_json::json!({"format": 2, "name": "a", "kind": "value", "key_tag": "u8"});
        let err = serde_json::from_value::<StateInfo>(missing_tag).unwrap_err();
        assert!(err.to_string().contains("value_tag"), "{err}");
    }
}
