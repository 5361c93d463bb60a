//! Stable type tags, part of the on-disk format: a state's record keeps the tag of each of its types,
//! and registering the state again with a type of another tag is refused. Rust's own type names are
//! not used because the standard library does not promise they stay the same across compiler
//! versions (a toolchain upgrade could make a job's own state "incompatible") nor that two types
//! never share one.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A type that can be a key, value, element or user key of a state, with a stable **type tag**.
///
/// The tag is recorded with the state (in its backend directory and in every checkpoint) and
/// compared whenever the state is registered again: a different tag is refused with
/// [`ErrorKind::Invalid`](crate::ErrorKind) naming both tags, instead of stored bytes being misread.
/// Tags are therefore part of the on-disk format. Keep a type's tag while its serde encoding stays
/// readable by the new type; change it (for example `myapp.Order/v1` → `myapp.Order/v2`) to declare
/// the new type incompatible with what is stored.
///
/// Implement it for your own types with [`state_type!`](crate::state_type):
///
/// ```
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct Order { id: u64, cents: i64 }
///
/// rockpoint::state_type!(Order = "shop.Order/v1");
///
/// use rockpoint::StateType;
/// assert_eq!(Order::type_tag(), "shop.Order/v1");
/// assert_eq!(<Vec<Order>>::type_tag(), "vec<shop.Order/v1>");
/// ```
///
/// or by hand, for a generic type:
///
/// ```
/// use std::borrow::Cow;
/// use rockpoint::StateType;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct Timestamped<T> { at_ms: u64, value: T }
///
/// impl<T: StateType> StateType for Timestamped<T> {
///     fn type_tag() -> Cow<'static, str> {
///         format!("myapp.Timestamped/v1<{}>", T::type_tag()).into()
///     }
/// }
/// ```
///
/// Use tags that name your application and a version; keep them to letters, digits and `._/:-`.
/// A foreign type (say `uuid::Uuid`) gets a tag through a newtype of your own with
/// `#[serde(transparent)]`, which leaves its encoding unchanged.
///
/// Tags of the implementations provided here (`T`, `K`, `V` stand for the tags of the parameters):
///
/// | Type | Tag |
/// |---|---|
/// | `()`, `bool`, `char` | `()`, `bool`, `char` |
/// | `u8` … `u128`, `usize`, `i8` … `i128`, `isize`, `f32`, `f64` | the type's name: `u64`, `f64`, … |
/// | `String` | `string` |
/// | `serde_bytes::ByteBuf` (one MessagePack binary) | `bytes` |
/// | `Option<T>` | `option<T>` |
/// | `Vec<T>` | `vec<T>` |
/// | `[T; N]` | `[T;N]`, e.g. `[u8;32]` |
/// | `(A,)`, `(A, B)`, `(A, B, C)`, `(A, B, C, D)` | `(A,)`, `(A,B)`, `(A,B,C)`, `(A,B,C,D)` |
/// | `BTreeMap<K, V>`, `HashMap<K, V>` | `map<K,V>` |
/// | `BTreeSet<T>`, `HashSet<T>` | `set<T>` |
///
/// Types with the same encoding and meaning share a tag (`BTreeMap` and `HashMap` are both `map`),
/// so switching between them keeps the state readable. `Vec<u8>` (`vec<u8>`, an array of numbers)
/// and `ByteBuf` (`bytes`, one binary) are encoded differently and so are tagged differently.
pub trait StateType: Serialize + DeserializeOwned {
    /// The type's tag; see the [trait docs](StateType).
    fn type_tag() -> Cow<'static, str>;
}

/// Implements [`StateType`] with a fixed tag, for one or more types:
///
/// ```
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Serialize, Deserialize)] struct Order;
/// # #[derive(Serialize, Deserialize)] struct Customer;
/// rockpoint::state_type!(Order = "shop.Order/v1", Customer = "shop.Customer/v2");
/// ```
///
/// The tag must be a string literal: it is part of the on-disk format, so it should read the same
/// in the source as on disk.
#[macro_export]
macro_rules! state_type {
    ($($type:ty = $tag:literal),+ $(,)?) => {
        $(
            impl $crate::StateType for $type {
                fn type_tag() -> ::std::borrow::Cow<'static, str> {
                    ::std::borrow::Cow::Borrowed($tag)
                }
            }
        )+
    };
}

crate::state_type!(
    () = "()",
    bool = "bool",
    char = "char",
    u8 = "u8",
    u16 = "u16",
    u32 = "u32",
    u64 = "u64",
    u128 = "u128",
    usize = "usize",
    i8 = "i8",
    i16 = "i16",
    i32 = "i32",
    i64 = "i64",
    i128 = "i128",
    isize = "isize",
    f32 = "f32",
    f64 = "f64",
    String = "string",
    serde_bytes::ByteBuf = "bytes",
);

impl<T: StateType> StateType for Option<T> {
    fn type_tag() -> Cow<'static, str> {
        format!("option<{}>", T::type_tag()).into()
    }
}

impl<T: StateType> StateType for Vec<T> {
    fn type_tag() -> Cow<'static, str> {
        format!("vec<{}>", T::type_tag()).into()
    }
}

impl<T: StateType, const N: usize> StateType for [T; N]
where
    [T; N]: Serialize + DeserializeOwned,
{
    fn type_tag() -> Cow<'static, str> {
        format!("[{};{N}]", T::type_tag()).into()
    }
}

impl<A: StateType> StateType for (A,) {
    fn type_tag() -> Cow<'static, str> {
        format!("({},)", A::type_tag()).into()
    }
}

impl<A: StateType, B: StateType> StateType for (A, B) {
    fn type_tag() -> Cow<'static, str> {
        format!("({},{})", A::type_tag(), B::type_tag()).into()
    }
}

impl<A: StateType, B: StateType, C: StateType> StateType for (A, B, C) {
    fn type_tag() -> Cow<'static, str> {
        format!("({},{},{})", A::type_tag(), B::type_tag(), C::type_tag()).into()
    }
}

impl<A: StateType, B: StateType, C: StateType, D: StateType> StateType for (A, B, C, D) {
    fn type_tag() -> Cow<'static, str> {
        let (a, b, c, d) = (A::type_tag(), B::type_tag(), C::type_tag(), D::type_tag());
        format!("({a},{b},{c},{d})").into()
    }
}

impl<K: StateType + Ord, V: StateType> StateType for BTreeMap<K, V> {
    fn type_tag() -> Cow<'static, str> {
        map_tag::<K, V>()
    }
}

impl<K: StateType, V: StateType, S> StateType for HashMap<K, V, S>
where
    HashMap<K, V, S>: Serialize + DeserializeOwned,
{
    fn type_tag() -> Cow<'static, str> {
        map_tag::<K, V>()
    }
}

impl<T: StateType + Ord> StateType for BTreeSet<T> {
    fn type_tag() -> Cow<'static, str> {
        set_tag::<T>()
    }
}

impl<T: StateType, S> StateType for HashSet<T, S>
where
    HashSet<T, S>: Serialize + DeserializeOwned,
{
    fn type_tag() -> Cow<'static, str> {
        set_tag::<T>()
    }
}

fn map_tag<K: StateType, V: StateType>() -> Cow<'static, str> {
    format!("map<{},{}>", K::type_tag(), V::type_tag()).into()
}

fn set_tag<T: StateType>() -> Cow<'static, str> {
    format!("set<{}>", T::type_tag()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Custom;
    crate::state_type!(Custom = "test.Custom/v1");

    #[test]
    fn composite_std_types_have_the_documented_tags() {
        assert_eq!(<()>::type_tag(), "()");
        assert_eq!(String::type_tag(), "string");
        assert_eq!(u64::type_tag(), "u64");
        assert_eq!(isize::type_tag(), "isize");
        assert_eq!(serde_bytes::ByteBuf::type_tag(), "bytes");
        assert_eq!(<Vec<Option<u64>>>::type_tag(), "vec<option<u64>>");
        assert_eq!(<[u8; 32]>::type_tag(), "[u8;32]");
        assert_eq!(<(u8,)>::type_tag(), "(u8,)");
        assert_eq!(<(u64, String)>::type_tag(), "(u64,string)");
        assert_eq!(<(bool, char, f32)>::type_tag(), "(bool,char,f32)");
        assert_eq!(<(i8, i16, i32, i64)>::type_tag(), "(i8,i16,i32,i64)");
        assert_eq!(
            <BTreeMap<String, Vec<u8>>>::type_tag(),
            "map<string,vec<u8>>"
        );
        assert_eq!(
            <HashMap<String, Vec<u8>>>::type_tag(),
            <BTreeMap<String, Vec<u8>>>::type_tag()
        );
        assert_eq!(<BTreeSet<i32>>::type_tag(), "set<i32>");
        assert_eq!(<HashSet<i32>>::type_tag(), "set<i32>");
        assert_eq!(
            <Option<(Custom, Vec<Custom>)>>::type_tag(),
            "option<(test.Custom/v1,vec<test.Custom/v1>)>"
        );
    }

    /// Rust's type names are not a stable format; nothing in `src` may record them again.
    #[test]
    fn rust_type_names_are_not_used_in_src() {
        // Split so that this file does not match itself.
        let needles = [concat!("any::", "type_name"), concat!("type_name", "::<")];
        let mut dirs = vec![std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src")];
        let mut checked = 0;
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).expect("src is readable") {
                let path = entry.expect("src entry").path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let text = std::fs::read_to_string(&path).expect("source is UTF-8");
                    for needle in needles {
                        assert!(
                            !text.contains(needle),
                            "{} mentions `{needle}`",
                            path.display()
                        );
                    }
                    checked += 1;
                }
            }
        }
        assert!(checked > 10, "only {checked} source files found");
    }
}
