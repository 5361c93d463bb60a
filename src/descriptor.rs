//! Typed state declarations as a Flink user writes them (`ValueStateDescriptor<>("counts", …)`):
//! a constant naming a state and its types, which
//! [`KeyedStateBackend::state`](crate::KeyedStateBackend::state) registers and turns into a handle.
//! The types are recorded by their [`StateType`] tags ([`StateInfo`]), so a declaration that no longer
//! matches the stored state is refused instead of misreading it.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use crate::state::{ListState, MapState, ReducingState, StateCore, ValueState};
use crate::state_info::{StateInfo, StateKind};
use crate::state_type::StateType;

/// A typed declaration of a state: [`ValueStateDescriptor`], [`ListStateDescriptor`],
/// [`MapStateDescriptor`] or [`ReducingStateDescriptor`]. Pass one to
/// [`KeyedStateBackend::state`](crate::KeyedStateBackend::state) to get its handle.
///
/// Implemented only by the four descriptors of this crate.
pub trait StateDescriptor: sealed::Sealed {
    /// The handle [`KeyedStateBackend::state`](crate::KeyedStateBackend::state) returns.
    type State;
}

pub(crate) mod sealed {
    use crate::state::StateCore;
    use crate::state_info::StateInfo;

    pub trait Sealed {
        /// The record to register or compare with the stored one.
        fn info(&self) -> StateInfo;
        /// The handle over the registered state's column family.
        fn state(&self, core: StateCore) -> <Self as super::StateDescriptor>::State
        where
            Self: super::StateDescriptor;
    }
}

/// Marks the types a descriptor is for without owning values of them (so descriptors are `Send`,
/// `Sync` and constant whatever the types).
type Types<T> = PhantomData<fn() -> T>;

/// Declares a value state: one `V` per key `K`; its handle is a [`ValueState`].
///
/// ```
/// use rockpoint::ValueStateDescriptor;
///
/// const COUNTS: ValueStateDescriptor<String, u64> = ValueStateDescriptor::new("counts");
/// ```
pub struct ValueStateDescriptor<K, V> {
    name: Cow<'static, str>,
    _types: Types<(K, V)>,
}

impl<K, V> ValueStateDescriptor<K, V> {
    /// Declares value state `name` (a constant's name; see [`named`](Self::named) for one built at
    /// run time).
    pub const fn new(name: &'static str) -> Self {
        ValueStateDescriptor {
            name: Cow::Borrowed(name),
            _types: PhantomData,
        }
    }

    /// Declares value state `name` built at run time (e.g. `format!("{operator}.counts")`).
    pub fn named(name: impl Into<String>) -> Self {
        ValueStateDescriptor {
            name: Cow::Owned(name.into()),
            _types: PhantomData,
        }
    }

    /// The state's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl<K: StateType, V: StateType> StateDescriptor for ValueStateDescriptor<K, V> {
    type State = ValueState<K, V>;
}

impl<K: StateType, V: StateType> sealed::Sealed for ValueStateDescriptor<K, V> {
    fn info(&self) -> StateInfo {
        let (key, value) = (K::type_tag().into_owned(), V::type_tag().into_owned());
        StateInfo::new(&self.name, StateKind::Value, key, value, None)
    }

    fn state(&self, core: StateCore) -> <Self as StateDescriptor>::State {
        ValueState {
            core,
            _types: PhantomData,
        }
    }
}

/// Declares a list state: a list of `T` per key `K`; its handle is a [`ListState`].
///
/// ```
/// use rockpoint::ListStateDescriptor;
///
/// const SEEN: ListStateDescriptor<u64, String> = ListStateDescriptor::new("seen");
/// ```
pub struct ListStateDescriptor<K, T> {
    name: Cow<'static, str>,
    _types: Types<(K, T)>,
}

impl<K, T> ListStateDescriptor<K, T> {
    /// Declares list state `name` (a constant's name; see [`named`](Self::named) for one built at
    /// run time).
    pub const fn new(name: &'static str) -> Self {
        ListStateDescriptor {
            name: Cow::Borrowed(name),
            _types: PhantomData,
        }
    }

    /// Declares list state `name` built at run time.
    pub fn named(name: impl Into<String>) -> Self {
        ListStateDescriptor {
            name: Cow::Owned(name.into()),
            _types: PhantomData,
        }
    }

    /// The state's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl<K: StateType, T: StateType> StateDescriptor for ListStateDescriptor<K, T> {
    type State = ListState<K, T>;
}

impl<K: StateType, T: StateType> sealed::Sealed for ListStateDescriptor<K, T> {
    fn info(&self) -> StateInfo {
        let (key, element) = (K::type_tag().into_owned(), T::type_tag().into_owned());
        StateInfo::new(&self.name, StateKind::List, key, element, None)
    }

    fn state(&self, core: StateCore) -> <Self as StateDescriptor>::State {
        ListState {
            core,
            _types: PhantomData,
        }
    }
}

/// Declares a map state: per key `K`, a map from user keys `UK` to values `UV`; its handle is a
/// [`MapState`].
///
/// ```
/// use rockpoint::MapStateDescriptor;
///
/// const LAST_SEEN: MapStateDescriptor<String, u32, u64> = MapStateDescriptor::new("last_seen");
/// ```
pub struct MapStateDescriptor<K, UK, UV> {
    name: Cow<'static, str>,
    _types: Types<(K, UK, UV)>,
}

impl<K, UK, UV> MapStateDescriptor<K, UK, UV> {
    /// Declares map state `name` (a constant's name; see [`named`](Self::named) for one built at
    /// run time).
    pub const fn new(name: &'static str) -> Self {
        MapStateDescriptor {
            name: Cow::Borrowed(name),
            _types: PhantomData,
        }
    }

    /// Declares map state `name` built at run time.
    pub fn named(name: impl Into<String>) -> Self {
        MapStateDescriptor {
            name: Cow::Owned(name.into()),
            _types: PhantomData,
        }
    }

    /// The state's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl<K: StateType, UK: StateType, UV: StateType> StateDescriptor for MapStateDescriptor<K, UK, UV> {
    type State = MapState<K, UK, UV>;
}

impl<K: StateType, UK: StateType, UV: StateType> sealed::Sealed for MapStateDescriptor<K, UK, UV> {
    fn info(&self) -> StateInfo {
        let (key, value) = (K::type_tag().into_owned(), UV::type_tag().into_owned());
        let user_key = UK::type_tag().into_owned();
        StateInfo::new(&self.name, StateKind::Map, key, value, Some(user_key))
    }

    fn state(&self, core: StateCore) -> <Self as StateDescriptor>::State {
        MapState {
            core,
            _types: PhantomData,
        }
    }
}

/// Declares a reducing state: one `V` per key `K`, folded by `reduce(stored, added)` on every
/// [`ReducingState::add`]; its handle is a [`ReducingState`].
///
/// ```
/// use rockpoint::ReducingStateDescriptor;
///
/// const SUMS: ReducingStateDescriptor<String, u64> = ReducingStateDescriptor::new("sums", |a, b| a + b);
/// ```
///
/// The function is a plain `fn` (a closure that captures nothing coerces to one), so the declaration
/// can be a constant; the fold is not recorded, only the name, kind and types.
pub struct ReducingStateDescriptor<K, V> {
    name: Cow<'static, str>,
    reduce: fn(V, V) -> V,
    _types: Types<K>,
}

impl<K, V> ReducingStateDescriptor<K, V> {
    /// Declares reducing state `name` folded by `reduce` (a constant's name; see
    /// [`named`](Self::named) for one built at run time).
    pub const fn new(name: &'static str, reduce: fn(V, V) -> V) -> Self {
        ReducingStateDescriptor {
            name: Cow::Borrowed(name),
            reduce,
            _types: PhantomData,
        }
    }

    /// Declares reducing state `name` built at run time, folded by `reduce`.
    pub fn named(name: impl Into<String>, reduce: fn(V, V) -> V) -> Self {
        ReducingStateDescriptor {
            name: Cow::Owned(name.into()),
            reduce,
            _types: PhantomData,
        }
    }

    /// The state's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl<K: StateType, V: StateType> StateDescriptor for ReducingStateDescriptor<K, V> {
    type State = ReducingState<K, V>;
}

impl<K: StateType, V: StateType> sealed::Sealed for ReducingStateDescriptor<K, V> {
    fn info(&self) -> StateInfo {
        let (key, value) = (K::type_tag().into_owned(), V::type_tag().into_owned());
        StateInfo::new(&self.name, StateKind::Reducing, key, value, None)
    }

    fn state(&self, core: StateCore) -> <Self as StateDescriptor>::State {
        ReducingState {
            core,
            reduce: self.reduce,
            _types: PhantomData,
        }
    }
}

// Clone and Debug by hand: derived ones would require the type parameters to be Clone and Debug.

impl<K, V> Clone for ValueStateDescriptor<K, V> {
    fn clone(&self) -> Self {
        ValueStateDescriptor {
            name: self.name.clone(),
            _types: PhantomData,
        }
    }
}

impl<K, T> Clone for ListStateDescriptor<K, T> {
    fn clone(&self) -> Self {
        ListStateDescriptor {
            name: self.name.clone(),
            _types: PhantomData,
        }
    }
}

impl<K, UK, UV> Clone for MapStateDescriptor<K, UK, UV> {
    fn clone(&self) -> Self {
        MapStateDescriptor {
            name: self.name.clone(),
            _types: PhantomData,
        }
    }
}

impl<K, V> Clone for ReducingStateDescriptor<K, V> {
    fn clone(&self) -> Self {
        ReducingStateDescriptor {
            name: self.name.clone(),
            reduce: self.reduce,
            _types: PhantomData,
        }
    }
}

impl<K, V> fmt::Debug for ValueStateDescriptor<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ValueStateDescriptor")
            .field(&self.name)
            .finish()
    }
}

impl<K, T> fmt::Debug for ListStateDescriptor<K, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ListStateDescriptor")
            .field(&self.name)
            .finish()
    }
}

impl<K, UK, UV> fmt::Debug for MapStateDescriptor<K, UK, UV> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("MapStateDescriptor")
            .field(&self.name)
            .finish()
    }
}

impl<K, V> fmt::Debug for ReducingStateDescriptor<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ReducingStateDescriptor")
            .field(&self.name)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::sealed::Sealed;
    use super::*;

    const VALUES: ValueStateDescriptor<String, Vec<u8>> = ValueStateDescriptor::new("values");
    const LISTS: ListStateDescriptor<u64, (u32, bool)> = ListStateDescriptor::new("lists");
    const MAPS: MapStateDescriptor<String, u16, Option<String>> = MapStateDescriptor::new("maps");
    const SUMS: ReducingStateDescriptor<String, i64> =
        ReducingStateDescriptor::new("sums", |a, b| a + b);

    #[test]
    fn descriptors_record_name_kind_and_tags() {
        let tags = |info: StateInfo| {
            (
                info.name,
                info.kind,
                info.key_tag,
                info.value_tag,
                info.user_key_tag,
            )
        };
        assert_eq!(
            tags(VALUES.info()),
            (
                "values".into(),
                StateKind::Value,
                "string".into(),
                "vec<u8>".into(),
                None
            )
        );
        assert_eq!(
            tags(LISTS.info()),
            (
                "lists".into(),
                StateKind::List,
                "u64".into(),
                "(u32,bool)".into(),
                None
            )
        );
        assert_eq!(
            tags(MAPS.info()),
            (
                "maps".into(),
                StateKind::Map,
                "string".into(),
                "option<string>".into(),
                Some("u16".into())
            )
        );
        assert_eq!(
            tags(SUMS.info()),
            (
                "sums".into(),
                StateKind::Reducing,
                "string".into(),
                "i64".into(),
                None
            )
        );
        assert_eq!(
            ValueStateDescriptor::<String, Vec<u8>>::named(String::from("values")).info(),
            VALUES.info()
        );
        assert_eq!(
            format!("{:?}", SUMS.clone()),
            r#"ReducingStateDescriptor("sums")"#
        );
    }
}
