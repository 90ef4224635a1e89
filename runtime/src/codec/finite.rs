//! A serde serializer that only checks that every float in a value is finite.
//!
//! `serde_json` writes NaN and infinities as `null`, which would silently turn a sealed value
//! into another one (or make it unreadable). [`check_finite`] walks the value first and refuses
//! it instead.

use std::fmt;

use serde::ser::{self, Serialize};

/// The walk found a non-finite float (or the value's own `Serialize` failed).
#[derive(Debug)]
pub(crate) struct NotFinite(String);

impl fmt::Display for NotFinite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotFinite {}

impl ser::Error for NotFinite {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        NotFinite(msg.to_string())
    }
}

/// Checks every `f32`/`f64` inside `value`.
pub(crate) fn check_finite<T: Serialize + ?Sized>(value: &T) -> Result<(), NotFinite> {
    value.serialize(Checker)
}

struct Checker;

fn float(v: f64) -> Result<(), NotFinite> {
    if v.is_finite() {
        Ok(())
    } else {
        Err(NotFinite(
            "a non-finite float (NaN or infinity) has no JSON form".into(),
        ))
    }
}

/// Serializer methods that ignore their arguments (`$arg`, their types) and return `Ok($ok)`:
/// the values that hold no float, and the starts of compound values (whose parts the
/// `compound!` impls check).
macro_rules! accept {
    ($ret:ty = $ok:expr; $($name:ident($($arg:ty),*)),* $(,)?) => {
        $(fn $name(self, $(_: $arg),*) -> Result<$ret, NotFinite> { Ok($ok) })*
    };
}

impl ser::Serializer for Checker {
    type Ok = ();
    type Error = NotFinite;
    type SerializeSeq = Checker;
    type SerializeTuple = Checker;
    type SerializeTupleStruct = Checker;
    type SerializeTupleVariant = Checker;
    type SerializeMap = Checker;
    type SerializeStruct = Checker;
    type SerializeStructVariant = Checker;

    accept!(() = ();
        serialize_bool(bool), serialize_i8(i8), serialize_i16(i16), serialize_i32(i32),
        serialize_i64(i64), serialize_i128(i128), serialize_u8(u8), serialize_u16(u16),
        serialize_u32(u32), serialize_u64(u64), serialize_u128(u128), serialize_char(char),
        serialize_str(&str), serialize_bytes(&[u8]), serialize_none(), serialize_unit(),
        serialize_unit_struct(&'static str),
        serialize_unit_variant(&'static str, u32, &'static str));
    accept!(Checker = Checker;
        serialize_seq(Option<usize>),
        serialize_tuple(usize),
        serialize_tuple_struct(&'static str, usize),
        serialize_tuple_variant(&'static str, u32, &'static str, usize),
        serialize_map(Option<usize>),
        serialize_struct(&'static str, usize),
        serialize_struct_variant(&'static str, u32, &'static str, usize));

    fn serialize_f32(self, v: f32) -> Result<(), NotFinite> {
        float(f64::from(v))
    }
    fn serialize_f64(self, v: f64) -> Result<(), NotFinite> {
        float(v)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, v: &T) -> Result<(), NotFinite> {
        v.serialize(Checker)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        v: &T,
    ) -> Result<(), NotFinite> {
        v.serialize(Checker)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        v: &T,
    ) -> Result<(), NotFinite> {
        v.serialize(Checker)
    }
}

macro_rules! compound {
    ($tr:ident, $method:ident $(, $key:ty)?) => {
        impl ser::$tr for Checker {
            type Ok = ();
            type Error = NotFinite;
            fn $method<T: Serialize + ?Sized>(
                &mut self,
                $(_: $key,)?
                v: &T,
            ) -> Result<(), NotFinite> {
                v.serialize(Checker)
            }
            fn end(self) -> Result<(), NotFinite> {
                Ok(())
            }
        }
    };
}

compound!(SerializeSeq, serialize_element);
compound!(SerializeTuple, serialize_element);
compound!(SerializeTupleStruct, serialize_field);
compound!(SerializeTupleVariant, serialize_field);
compound!(SerializeStruct, serialize_field, &'static str);
compound!(SerializeStructVariant, serialize_field, &'static str);

impl ser::SerializeMap for Checker {
    type Ok = ();
    type Error = NotFinite;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, k: &T) -> Result<(), NotFinite> {
        k.serialize(Checker)
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), NotFinite> {
        v.serialize(Checker)
    }
    fn end(self) -> Result<(), NotFinite> {
        Ok(())
    }
}
