//! What is recorded about a state, the bottom of the format: its name, kind and the types of its
//! parts. Kept in every backend directory and in every checkpoint's metadata.

use serde::{Deserialize, Serialize};

/// The kind of a registered state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StateKind {
    /// One value per key ([`ValueState`]).
    Value,
    /// An append-friendly list per key ([`ListState`]).
    List,
    /// A map per key, each entry its own row ([`MapState`]).
    Map,
    /// One value per key folded by a user function ([`ReducingState`]).
    Reducing,
}

/// What is recorded about a state: its name, kind and the Rust types of its parts.
///
/// Types are recorded by `std::any::type_name`; re-registering a state with another kind or type
/// fails with [`ErrorKind::Invalid`](crate::ErrorKind) rather than misreading stored bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateDescriptor {
    /// The state's name, also the name of its column family.
    pub name: String,
    /// Its kind.
    pub kind: StateKind,
    /// Type of the (partitioning) key.
    pub key_type: String,
    /// Type of the value (for lists: an element; for maps: an entry's value).
    pub value_type: String,
    /// For map state: type of the user key of an entry.
    pub user_key_type: Option<String>,
}

impl StateDescriptor {
    pub(crate) fn new<K: ?Sized, V: ?Sized>(
        name: &str,
        kind: StateKind,
        user_key_type: Option<String>,
    ) -> Self {
        StateDescriptor {
            name: name.to_owned(),
            kind,
            key_type: std::any::type_name::<K>().to_owned(),
            value_type: std::any::type_name::<V>().to_owned(),
            user_key_type,
        }
    }

    pub(crate) fn describe(&self) -> String {
        match &self.user_key_type {
            Some(user_key) => format!(
                "{:?} state of {} -> {{{} -> {}}}",
                self.kind, self.key_type, user_key, self.value_type
            ),
            None => format!(
                "{:?} state of {} -> {}",
                self.kind, self.key_type, self.value_type
            ),
        }
    }
}
