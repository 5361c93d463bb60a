//! Typed keyed state: value, list, map and reducing state over one column family each.
//!
//! Handles are cheap to clone and share the backend. Keys and values are MessagePack (rmp-serde);
//! rows are laid out as described in `codec`. A key whose key group lies outside the backend's range
//! is refused ([`ErrorKind::Invalid`](crate::ErrorKind)); bytes that do not decode give
//! [`ErrorKind::Corruption`](crate::ErrorKind) naming the state, never a panic.

use std::marker::PhantomData;
use std::sync::Arc;

use rocksdb::{AsColumnFamilyRef, DB, DBIteratorWithThreadMode, IteratorMode, ReadOptions};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::keygroup::KeyGroupRange;

/// The column family handle of a state, kept instead of looked up by name on every operation
/// (the lookup takes a lock, a string-keyed map search and an allocation: measured ~5% of a get).
#[derive(Clone, Copy)]
struct CfHandle(*mut librocksdb_sys::rocksdb_column_family_handle_t);

// SAFETY: the handle belongs to a column family that is never dropped (the engine has no drop-state
// operation) of a DB that outlives it: every `CfHandle` sits in a `StateCore` next to the
// `Arc<Engine>` that owns the DB. RocksDB column family handles are safe to use from any thread.
unsafe impl Send for CfHandle {}
unsafe impl Sync for CfHandle {}

impl AsColumnFamilyRef for CfHandle {
    fn inner(&self) -> *mut librocksdb_sys::rocksdb_column_family_handle_t {
        self.0
    }
}

/// Untyped access to one state's column family.
///
/// `pub` only because the sealed trait behind [`StateDescriptor`](crate::StateDescriptor) hands it
/// to descriptors; this module is private, so no one outside the crate can name it.
#[derive(Clone)]
pub struct StateCore {
    cf: CfHandle,
    inner: Arc<Engine>,
    name: Arc<str>,
}

type RowIter<'a> = DBIteratorWithThreadMode<'a, DB>;

/// One raw row: the row key and the stored bytes.
pub(crate) type RawRow = (Box<[u8]>, Box<[u8]>);

impl StateCore {
    /// The state's core; fails if its column family does not exist (it is created on registration).
    pub(crate) fn new(inner: Arc<Engine>, name: String) -> Result<Self> {
        let cf = inner
            .db
            .cf_handle(&name)
            .map(|cf| CfHandle(cf.inner()))
            .ok_or_else(|| Error::not_found(format!("column family of state `{name}`")))?;
        Ok(StateCore {
            cf,
            inner,
            name: name.into(),
        })
    }

    fn cf(&self) -> Result<CfHandle> {
        Ok(self.cf)
    }

    fn key<K: Serialize + ?Sized>(&self, key: &K) -> Result<Vec<u8>> {
        codec::encode_key(
            &self.name,
            key,
            self.inner.max_parallelism,
            self.inner.key_groups,
        )
    }

    fn get_raw(&self, row_key: &[u8]) -> Result<Option<rocksdb::DBPinnableSlice<'_>>> {
        let cf = self.cf()?;
        self.inner
            .db
            .get_pinned_cf(&cf, row_key)
            .map_err(|e| self.rocks("reading", e))
    }

    fn put_raw(&self, row_key: &[u8], value: &[u8]) -> Result<()> {
        let cf = self.cf()?;
        self.inner
            .db
            .put_cf_opt(&cf, row_key, value, &self.inner.write_opts)
            .map_err(|e| self.rocks("writing", e))
    }

    fn merge_raw(&self, row_key: &[u8], operand: &[u8]) -> Result<()> {
        let cf = self.cf()?;
        self.inner
            .db
            .merge_cf_opt(&cf, row_key, operand, &self.inner.write_opts)
            .map_err(|e| self.rocks("appending to", e))
    }

    fn delete_raw(&self, row_key: &[u8]) -> Result<()> {
        let cf = self.cf()?;
        self.inner
            .db
            .delete_cf_opt(&cf, row_key, &self.inner.write_opts)
            .map_err(|e| self.rocks("deleting from", e))
    }

    fn delete_range_raw(&self, from: &[u8], to: &[u8]) -> Result<()> {
        let cf = self.cf()?;
        self.inner
            .db
            .delete_range_cf_opt(&cf, from, to, &self.inner.write_opts)
            .map_err(|e| self.rocks("clearing", e))
    }

    fn rocks(&self, action: &str, e: rocksdb::Error) -> Error {
        Error::rocksdb(format!("{action} state `{}`", self.name), e)
    }

    /// Rows whose key lies in `[lower, upper)`.
    fn rows_between(&self, lower: Vec<u8>, upper: Option<Vec<u8>>) -> Result<RowIter<'_>> {
        let cf = self.cf()?;
        let mut opts = ReadOptions::default();
        opts.set_iterate_lower_bound(lower);
        if let Some(upper) = upper {
            opts.set_iterate_upper_bound(upper);
        }
        Ok(self
            .inner
            .db
            .iterator_cf_opt(&cf, opts, IteratorMode::Start))
    }

    /// Raw rows of the state, optionally limited to a key-group range.
    pub(crate) fn raw_rows(
        &self,
        range: Option<KeyGroupRange>,
    ) -> Result<impl Iterator<Item = Result<RawRow>> + '_> {
        let (lower, upper) = match range {
            Some(range) => {
                let (lower, upper) = codec::range_bounds(range);
                (lower, Some(upper))
            }
            None => (Vec::new(), None),
        };
        let iter = self.rows_between(lower, upper)?;
        Ok(iter.map(move |row| row.map_err(|e| self.rocks("iterating", e))))
    }

    /// Rows whose key starts with `prefix`.
    fn rows_with_prefix(
        &self,
        prefix: Vec<u8>,
    ) -> Result<impl Iterator<Item = Result<RawRow>> + '_> {
        let upper = codec::prefix_successor(&prefix);
        let iter = self.rows_between(prefix, upper)?;
        Ok(iter.map(move |row| row.map_err(|e| self.rocks("iterating", e))))
    }

    /// The single value stored under `key` (value and reducing state).
    fn get_value<K: Serialize, V: DeserializeOwned>(&self, key: &K) -> Result<Option<V>> {
        let row_key = self.key(key)?;
        match self.get_raw(&row_key)? {
            Some(bytes) => codec::decode(&self.name, "value", &bytes).map(Some),
            None => Ok(None),
        }
    }

    fn put_value<K: Serialize, V: Serialize>(&self, key: &K, value: &V) -> Result<()> {
        let row_key = self.key(key)?;
        let bytes = codec::encode(&self.name, "value", value)?;
        self.put_raw(&row_key, &bytes)
    }

    fn delete_key<K: Serialize>(&self, key: &K) -> Result<()> {
        let row_key = self.key(key)?;
        self.delete_raw(&row_key)
    }

    /// Every `(key, value)` of a state with one value per key.
    fn value_entries<K: DeserializeOwned, V: DeserializeOwned>(
        &self,
        range: Option<KeyGroupRange>,
    ) -> Result<impl Iterator<Item = Result<(K, V)>> + '_> {
        let name = &self.name;
        Ok(self.raw_rows(range)?.map(move |row| {
            let (row_key, value) = row?;
            let (key, rest) = codec::decode_row_key(name, &row_key)?;
            if !rest.is_empty() {
                return Err(codec::decode_error(
                    name,
                    "row key",
                    "trailing bytes after the key".into(),
                ));
            }
            Ok((key, codec::decode(name, "value", &value)?))
        }))
    }

    /// Distinct keys of the state (map state has several rows per key, which are adjacent).
    fn keys<K: DeserializeOwned>(
        &self,
        range: Option<KeyGroupRange>,
    ) -> Result<impl Iterator<Item = Result<K>> + '_> {
        let mut previous: Option<Vec<u8>> = None;
        let name = self.name.clone();
        Ok(self.raw_rows(range)?.filter_map(move |row| {
            let decoded = row.and_then(|(row_key, _)| {
                let (key, rest) = codec::decode_row_key::<K>(&name, &row_key)?;
                let key_len = row_key.len() - rest.len();
                let key_bytes = &row_key[..key_len];
                if previous.as_deref() == Some(key_bytes) {
                    return Ok(None);
                }
                previous = Some(key_bytes.to_vec());
                Ok(Some(key))
            });
            decoded.transpose()
        }))
    }
}

/// Marks the types a state handle is for without owning values of them (so the handle is `Send`
/// and `Sync` whatever the types).
type Types<T> = PhantomData<fn(T) -> T>;

/// One value per key; declared by a [`ValueStateDescriptor`](crate::ValueStateDescriptor).
pub struct ValueState<K, V> {
    pub(crate) core: StateCore,
    pub(crate) _types: Types<(K, V)>,
}

impl<K, V> Clone for ValueState<K, V> {
    fn clone(&self) -> Self {
        ValueState {
            core: self.core.clone(),
            _types: PhantomData,
        }
    }
}

impl<K: Serialize + DeserializeOwned, V: Serialize + DeserializeOwned> ValueState<K, V> {
    /// The value of `key`, if any.
    pub fn get(&self, key: &K) -> Result<Option<V>> {
        self.core.get_value(key)
    }

    /// Sets the value of `key`.
    pub fn put(&self, key: &K, value: &V) -> Result<()> {
        self.core.put_value(key, value)
    }

    /// Removes the value of `key` (a no-op if there is none).
    pub fn clear(&self, key: &K) -> Result<()> {
        self.core.delete_key(key)
    }

    /// Every `(key, value)`, in row-key order, optionally of one key-group range only.
    pub fn entries(
        &self,
        range: Option<KeyGroupRange>,
    ) -> Result<impl Iterator<Item = Result<(K, V)>> + '_> {
        self.core.value_entries(range)
    }

    /// Every key, optionally of one key-group range only.
    pub fn keys(
        &self,
        range: Option<KeyGroupRange>,
    ) -> Result<impl Iterator<Item = Result<K>> + '_> {
        self.core.keys(range)
    }
}

/// A list per key; declared by a [`ListStateDescriptor`](crate::ListStateDescriptor). Appending is a
/// RocksDB merge: no read-modify-write.
pub struct ListState<K, T> {
    pub(crate) core: StateCore,
    pub(crate) _types: Types<(K, T)>,
}

impl<K, T> Clone for ListState<K, T> {
    fn clone(&self) -> Self {
        ListState {
            core: self.core.clone(),
            _types: PhantomData,
        }
    }
}

impl<K: Serialize + DeserializeOwned, T: Serialize + DeserializeOwned> ListState<K, T> {
    /// The elements of `key`'s list, in insertion order (empty if there are none).
    pub fn get(&self, key: &K) -> Result<Vec<T>> {
        let row_key = self.core.key(key)?;
        match self.core.get_raw(&row_key)? {
            Some(bytes) => codec::decode_all(&self.core.name, "list element", &bytes),
            None => Ok(Vec::new()),
        }
    }

    /// Appends one element.
    pub fn add(&self, key: &K, element: &T) -> Result<()> {
        let row_key = self.core.key(key)?;
        let bytes = codec::encode(&self.core.name, "list element", element)?;
        self.core.merge_raw(&row_key, &bytes)
    }

    /// Appends several elements in one write (a no-op for none).
    pub fn add_all<'a>(&self, key: &K, elements: impl IntoIterator<Item = &'a T>) -> Result<()>
    where
        T: 'a,
    {
        let bytes = self.encode_all(elements)?;
        if bytes.is_empty() {
            return Ok(());
        }
        let row_key = self.core.key(key)?;
        self.core.merge_raw(&row_key, &bytes)
    }

    /// Replaces the list with `elements` (an empty list clears it).
    pub fn put<'a>(&self, key: &K, elements: impl IntoIterator<Item = &'a T>) -> Result<()>
    where
        T: 'a,
    {
        let bytes = self.encode_all(elements)?;
        let row_key = self.core.key(key)?;
        if bytes.is_empty() {
            self.core.delete_raw(&row_key)
        } else {
            self.core.put_raw(&row_key, &bytes)
        }
    }

    /// Removes the list of `key`.
    pub fn clear(&self, key: &K) -> Result<()> {
        let row_key = self.core.key(key)?;
        self.core.delete_raw(&row_key)
    }

    /// Every `(key, list)`, optionally of one key-group range only.
    pub fn entries(
        &self,
        range: Option<KeyGroupRange>,
    ) -> Result<impl Iterator<Item = Result<(K, Vec<T>)>> + '_> {
        let name = &self.core.name;
        Ok(self.core.raw_rows(range)?.map(move |row| {
            let (row_key, value) = row?;
            let (key, _) = codec::decode_row_key(name, &row_key)?;
            Ok((key, codec::decode_all(name, "list element", &value)?))
        }))
    }

    /// Every key, optionally of one key-group range only.
    pub fn keys(
        &self,
        range: Option<KeyGroupRange>,
    ) -> Result<impl Iterator<Item = Result<K>> + '_> {
        self.core.keys(range)
    }

    fn encode_all<'a>(&self, elements: impl IntoIterator<Item = &'a T>) -> Result<Vec<u8>>
    where
        T: 'a,
    {
        let mut bytes = Vec::new();
        for element in elements {
            codec::encode_into(&self.core.name, "list element", element, &mut bytes)?;
        }
        Ok(bytes)
    }
}

/// A map per key; declared by a [`MapStateDescriptor`](crate::MapStateDescriptor). Every entry is its
/// own row, so entries are read and written one at a time.
pub struct MapState<K, UK, UV> {
    pub(crate) core: StateCore,
    pub(crate) _types: Types<(K, UK, UV)>,
}

impl<K, UK, UV> Clone for MapState<K, UK, UV> {
    fn clone(&self) -> Self {
        MapState {
            core: self.core.clone(),
            _types: PhantomData,
        }
    }
}

impl<K, UK, UV> MapState<K, UK, UV>
where
    K: Serialize + DeserializeOwned,
    UK: Serialize + DeserializeOwned,
    UV: Serialize + DeserializeOwned,
{
    fn entry_key(&self, key: &K, user_key: &UK) -> Result<Vec<u8>> {
        let mut row_key = self.core.key(key)?;
        codec::encode_into(&self.core.name, "user key", user_key, &mut row_key)?;
        Ok(row_key)
    }

    /// The value of entry `user_key` of `key`'s map.
    pub fn get(&self, key: &K, user_key: &UK) -> Result<Option<UV>> {
        let row_key = self.entry_key(key, user_key)?;
        match self.core.get_raw(&row_key)? {
            Some(bytes) => codec::decode(&self.core.name, "map value", &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Whether `key`'s map has an entry `user_key`.
    pub fn contains(&self, key: &K, user_key: &UK) -> Result<bool> {
        let row_key = self.entry_key(key, user_key)?;
        Ok(self.core.get_raw(&row_key)?.is_some())
    }

    /// Sets entry `user_key` of `key`'s map.
    pub fn put(&self, key: &K, user_key: &UK, value: &UV) -> Result<()> {
        let row_key = self.entry_key(key, user_key)?;
        let bytes = codec::encode(&self.core.name, "map value", value)?;
        self.core.put_raw(&row_key, &bytes)
    }

    /// Removes entry `user_key` of `key`'s map.
    pub fn remove(&self, key: &K, user_key: &UK) -> Result<()> {
        let row_key = self.entry_key(key, user_key)?;
        self.core.delete_raw(&row_key)
    }

    /// Removes every entry of `key`'s map (one range delete).
    pub fn clear(&self, key: &K) -> Result<()> {
        let prefix = self.core.key(key)?;
        let upper = codec::prefix_successor(&prefix).expect("key-group prefix is below 0x8000");
        self.core.delete_range_raw(&prefix, &upper)
    }

    /// Whether `key`'s map has no entries.
    pub fn is_empty(&self, key: &K) -> Result<bool> {
        let prefix = self.core.key(key)?;
        Ok(self
            .core
            .rows_with_prefix(prefix)?
            .next()
            .transpose()?
            .is_none())
    }

    /// The entries of `key`'s map, ordered by the encoded user key.
    pub fn entries(&self, key: &K) -> Result<impl Iterator<Item = Result<(UK, UV)>> + '_> {
        let prefix = self.core.key(key)?;
        let prefix_len = prefix.len();
        let name = &self.core.name;
        Ok(self.core.rows_with_prefix(prefix)?.map(move |row| {
            let (row_key, value) = row?;
            let user_key = codec::decode(name, "user key", &row_key[prefix_len..])?;
            Ok((user_key, codec::decode(name, "map value", &value)?))
        }))
    }

    /// The user keys of `key`'s map.
    pub fn user_keys(&self, key: &K) -> Result<impl Iterator<Item = Result<UK>> + '_> {
        Ok(self
            .entries_raw(key)?
            .map(|row| row.map(|(user_key, _)| user_key)))
    }

    /// The values of `key`'s map.
    pub fn values(&self, key: &K) -> Result<impl Iterator<Item = Result<UV>> + '_> {
        let prefix = self.core.key(key)?;
        let name = &self.core.name;
        Ok(self
            .core
            .rows_with_prefix(prefix)?
            .map(move |row| codec::decode(name, "map value", &row?.1)))
    }

    /// Every key that has at least one entry, optionally of one key-group range only.
    pub fn keys(
        &self,
        range: Option<KeyGroupRange>,
    ) -> Result<impl Iterator<Item = Result<K>> + '_> {
        self.core.keys(range)
    }

    /// Every `(key, user key, value)`, optionally of one key-group range only.
    #[allow(clippy::type_complexity)]
    pub fn all_entries(
        &self,
        range: Option<KeyGroupRange>,
    ) -> Result<impl Iterator<Item = Result<(K, UK, UV)>> + '_> {
        let name = &self.core.name;
        Ok(self.core.raw_rows(range)?.map(move |row| {
            let (row_key, value) = row?;
            let (key, rest) = codec::decode_row_key(name, &row_key)?;
            let user_key = codec::decode(name, "user key", rest)?;
            Ok((key, user_key, codec::decode(name, "map value", &value)?))
        }))
    }

    fn entries_raw(&self, key: &K) -> Result<impl Iterator<Item = Result<(UK, Box<[u8]>)>> + '_> {
        let prefix = self.core.key(key)?;
        let prefix_len = prefix.len();
        let name = &self.core.name;
        Ok(self.core.rows_with_prefix(prefix)?.map(move |row| {
            let (row_key, value) = row?;
            Ok((
                codec::decode(name, "user key", &row_key[prefix_len..])?,
                value,
            ))
        }))
    }
}

/// One value per key, folded with a user function on every [`add`](ReducingState::add); declared by a
/// [`ReducingStateDescriptor`](crate::ReducingStateDescriptor).
///
/// `add` reads, folds and writes the value (a read-modify-write, as in Flink): the fold is user code
/// and cannot run inside RocksDB's merge during recovery.
pub struct ReducingState<K, V> {
    pub(crate) core: StateCore,
    pub(crate) reduce: fn(V, V) -> V,
    pub(crate) _types: Types<(K, V)>,
}

impl<K, V> Clone for ReducingState<K, V> {
    fn clone(&self) -> Self {
        ReducingState {
            core: self.core.clone(),
            reduce: self.reduce,
            _types: PhantomData,
        }
    }
}

impl<K: Serialize + DeserializeOwned, V: Serialize + DeserializeOwned> ReducingState<K, V> {
    /// The folded value of `key`, if any.
    pub fn get(&self, key: &K) -> Result<Option<V>> {
        self.core.get_value(key)
    }

    /// Folds `value` into `key`'s value (or stores it if there is none).
    pub fn add(&self, key: &K, value: V) -> Result<()> {
        let folded = match self.core.get_value::<K, V>(key)? {
            Some(stored) => (self.reduce)(stored, value),
            None => value,
        };
        self.core.put_value(key, &folded)
    }

    /// Removes `key`'s value.
    pub fn clear(&self, key: &K) -> Result<()> {
        self.core.delete_key(key)
    }

    /// Every `(key, value)`, optionally of one key-group range only.
    pub fn entries(
        &self,
        range: Option<KeyGroupRange>,
    ) -> Result<impl Iterator<Item = Result<(K, V)>> + '_> {
        self.core.value_entries(range)
    }

    /// Every key, optionally of one key-group range only.
    pub fn keys(
        &self,
        range: Option<KeyGroupRange>,
    ) -> Result<impl Iterator<Item = Result<K>> + '_> {
        self.core.keys(range)
    }
}
