//! `google.protobuf.Value` and `Struct` kept in their wire encoding: Groove's answers in results, and records
//! sent as Structs.
//!
//! A batched call's answer can be a hundred tickets. Building it as a prost `Value` tree (a `BTreeMap` and a
//! heap string per key, a box per nesting level) and then encoding that tree cost more than everything else
//! a batch does, and the tree was many times the JSON's size in the stream's result queue. `JsonValue` is what
//! `build.rs` maps `google.protobuf.Value` to: JSON is encoded straight into protobuf bytes, which are sent
//! as they are; a client built from this crate decodes the bytes back into JSON only when it asks for it.
//! On the wire nothing changes: other clients see an ordinary `google.protobuf.Value`.
//!
//! `JsonObject` is what `google.protobuf.Struct` maps to, for a second reason: prost stops decoding at 100
//! nested messages, and every JSON level of a Struct costs three (Struct, map entry, Value), so a record nested
//! 33 levels deep failed the whole stream message. Kept as bytes, a Struct costs prost one level; its content is
//! read here, with this module's own depth limit, and a record over it is refused alone.

use std::fmt;

use prost::bytes::{Buf, BufMut};
use prost::encoding::{self, DecodeContext, WireType};
use prost::DecodeError;
use serde_json::{Map, Value};
use thiserror::Error;

use crate::api::json::number_to_json;

/// Field numbers of `google.protobuf.Value`, `Struct`, its map entries and `ListValue`.
mod field {
    pub const NULL: u32 = 1;
    pub const NUMBER: u32 = 2;
    pub const STRING: u32 = 3;
    pub const BOOL: u32 = 4;
    pub const STRUCT: u32 = 5;
    pub const LIST: u32 = 6;
    /// `Struct.fields` entries and `ListValue.values` items.
    pub const ITEM: u32 = 1;
    pub const ENTRY_KEY: u32 = 1;
    pub const ENTRY_VALUE: u32 = 2;
}

/// Deeper nesting is refused when decoding, so malformed input cannot exhaust the stack. Nothing the service
/// encodes goes deeper: serde_json stops at 128 levels when it parses Groove's answers and records.
const MAX_DEPTH: u32 = 128;

/// A `google.protobuf.Value` held as its encoded bytes.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct JsonValue {
    wire: Vec<u8>,
}

/// Bytes that are not a well-formed `google.protobuf.Value`.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("malformed google.protobuf.Value: {0}")]
pub struct MalformedValue(&'static str);

impl JsonValue {
    pub fn from_json(json: &Value) -> JsonValue {
        let mut container_sizes = Vec::new();
        let length = measure(json, &mut container_sizes);
        let mut writer = Writer {
            out: Vec::with_capacity(length),
            container_sizes: &container_sizes,
            next_container: 0,
        };
        writer.value(json);
        JsonValue { wire: writer.out }
    }

    /// The JSON this value holds. Numbers are doubles in a Value; integral ones come back as integers.
    pub fn to_json(&self) -> Result<Value, MalformedValue> {
        decode_value(&self.wire, 0)
    }

    /// The encoded `google.protobuf.Value`.
    pub fn as_encoded(&self) -> &[u8] {
        &self.wire
    }
}

impl fmt::Debug for JsonValue {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.to_json() {
            Ok(json) => write!(formatter, "JsonValue({json})"),
            Err(error) => write!(formatter, "JsonValue(<{error}>)"),
        }
    }
}

/// A `google.protobuf.Struct` held as its encoded bytes.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct JsonObject {
    wire: Vec<u8>,
}

impl JsonObject {
    pub fn from_json(object: &Map<String, Value>) -> JsonObject {
        // A Value holding a Struct is the Struct's bytes behind one field header.
        let value = JsonValue::from_json(&Value::Object(object.clone()));
        let mut fields = Fields { rest: &value.wire };
        let wire = match fields.next_field() {
            Ok(Some((field::STRUCT, FieldValue::Delimited(content)))) => content.to_vec(),
            _ => Vec::new(),
        };
        JsonObject { wire }
    }

    /// The JSON object this Struct holds. Numbers are doubles in a Struct; integral ones come back as integers.
    pub fn to_json(&self) -> Result<Value, MalformedValue> {
        decode_struct(&self.wire, 0)
    }
}

impl fmt::Debug for JsonObject {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.to_json() {
            Ok(json) => write!(formatter, "JsonObject({json})"),
            Err(error) => write!(formatter, "JsonObject(<{error}>)"),
        }
    }
}

/// Implements `prost::Message` for a type that keeps its encoded fields in `wire`.
macro_rules! kept_in_wire_encoding {
    ($kept:ty) => {
        impl prost::Message for $kept {
            fn encode_raw(&self, buf: &mut impl BufMut) {
                buf.put_slice(&self.wire);
            }

            /// Keeps each field as it came; `to_json` makes sense of them.
            fn merge_field(
                &mut self,
                tag: u32,
                wire_type: WireType,
                buf: &mut impl Buf,
                ctx: DecodeContext,
            ) -> Result<(), DecodeError> {
                keep_field(&mut self.wire, tag, wire_type, buf, ctx)
            }

            fn encoded_len(&self) -> usize {
                self.wire.len()
            }

            fn clear(&mut self) {
                self.wire.clear();
            }
        }
    };
}

kept_in_wire_encoding!(JsonValue);
kept_in_wire_encoding!(JsonObject);

/// Appends one decoded field to `wire`, re-encoded as it came. Nested messages stay bytes, so they cost prost
/// no recursion.
fn keep_field(
    wire: &mut Vec<u8>,
    tag: u32,
    wire_type: WireType,
    buf: &mut impl Buf,
    ctx: DecodeContext,
) -> Result<(), DecodeError> {
    match wire_type {
        WireType::Varint => {
            let mut number = 0u64;
            encoding::uint64::merge(wire_type, &mut number, buf, ctx)?;
            encoding::uint64::encode(tag, &number, wire);
        }
        WireType::SixtyFourBit => {
            let mut number = 0u64;
            encoding::fixed64::merge(wire_type, &mut number, buf, ctx)?;
            encoding::fixed64::encode(tag, &number, wire);
        }
        WireType::ThirtyTwoBit => {
            let mut number = 0u32;
            encoding::fixed32::merge(wire_type, &mut number, buf, ctx)?;
            encoding::fixed32::encode(tag, &number, wire);
        }
        WireType::LengthDelimited => {
            let mut content = Vec::new();
            encoding::bytes::merge(wire_type, &mut content, buf, ctx)?;
            encoding::bytes::encode(tag, &content, wire);
        }
        WireType::StartGroup | WireType::EndGroup => {
            encoding::skip_field(wire_type, tag, buf, ctx)?;
        }
    }
    Ok(())
}

/// One byte: every field number here is below 16.
fn key(tag: u32, wire_type: WireType) -> u8 {
    ((tag << 3) | wire_type as u32) as u8
}

/// Length of a length-delimited field whose content is `content` bytes long.
fn delimited_len(content: usize) -> usize {
    1 + encoding::encoded_len_varint(content as u64) + content
}

/// Length of a `Struct` map entry: the key, then the value of `value_len` bytes.
fn entry_len(name: &str, value_len: usize) -> usize {
    delimited_len(name.len()) + delimited_len(value_len)
}

fn scalar_len(json: &Value) -> Option<usize> {
    match json {
        Value::Null | Value::Bool(_) => Some(2),
        Value::Number(_) => Some(9),
        Value::String(text) => Some(delimited_len(text.len())),
        Value::Array(_) | Value::Object(_) => None,
    }
}

/// Encoded length of `json` as a Value. Pushes the content length of every Struct and ListValue in the order
/// `Writer` meets them, so that nested lengths are computed once rather than once per enclosing level.
fn measure(json: &Value, container_sizes: &mut Vec<usize>) -> usize {
    if let Some(length) = scalar_len(json) {
        return length;
    }
    let slot = container_sizes.len();
    container_sizes.push(0);
    let mut content = 0;
    match json {
        Value::Array(items) => {
            for item in items {
                content += delimited_len(measure(item, container_sizes));
            }
        }
        Value::Object(fields) => {
            for (name, value) in fields {
                content += delimited_len(entry_len(name, measure(value, container_sizes)));
            }
        }
        _ => {}
    }
    container_sizes[slot] = content;
    delimited_len(content)
}

struct Writer<'a> {
    out: Vec<u8>,
    container_sizes: &'a [usize],
    next_container: usize,
}

impl Writer<'_> {
    /// Encoded length of `json`, which is the next value to be written.
    fn len_of_next(&self, json: &Value) -> usize {
        scalar_len(json).unwrap_or_else(|| delimited_len(self.container_sizes[self.next_container]))
    }

    fn length(&mut self, length: usize) {
        encoding::encode_varint(length as u64, &mut self.out);
    }

    fn delimited_header(&mut self, tag: u32, length: usize) {
        self.out.push(key(tag, WireType::LengthDelimited));
        self.length(length);
    }

    /// Writes the header of the next Struct or ListValue, whose content length `measure` recorded.
    fn enter_container(&mut self, tag: u32) {
        let content = self.container_sizes[self.next_container];
        self.next_container += 1;
        self.delimited_header(tag, content);
    }

    fn value(&mut self, json: &Value) {
        match json {
            Value::Null => self.out.extend([key(field::NULL, WireType::Varint), 0]),
            Value::Bool(flag) => self
                .out
                .extend([key(field::BOOL, WireType::Varint), u8::from(*flag)]),
            Value::Number(number) => {
                self.out.push(key(field::NUMBER, WireType::SixtyFourBit));
                self.out
                    .extend(number.as_f64().unwrap_or(0.0).to_le_bytes());
            }
            Value::String(text) => {
                self.delimited_header(field::STRING, text.len());
                self.out.extend(text.as_bytes());
            }
            Value::Array(items) => {
                self.enter_container(field::LIST);
                for item in items {
                    let length = self.len_of_next(item);
                    self.delimited_header(field::ITEM, length);
                    self.value(item);
                }
            }
            Value::Object(fields) => {
                self.enter_container(field::STRUCT);
                for (name, value) in fields {
                    let value_len = self.len_of_next(value);
                    self.delimited_header(field::ITEM, entry_len(name, value_len));
                    self.delimited_header(field::ENTRY_KEY, name.len());
                    self.out.extend(name.as_bytes());
                    self.delimited_header(field::ENTRY_VALUE, value_len);
                    self.value(value);
                }
            }
        }
    }
}

/// Reads one field at a time from an encoded message.
struct Fields<'a> {
    rest: &'a [u8],
}

enum FieldValue<'a> {
    Varint(u64),
    Fixed64(u64),
    Delimited(&'a [u8]),
    /// A wire type no field here uses; skipped.
    Other,
}

impl<'a> Fields<'a> {
    fn next_field(&mut self) -> Result<Option<(u32, FieldValue<'a>)>, MalformedValue> {
        if self.rest.is_empty() {
            return Ok(None);
        }
        let (tag, wire_type) =
            encoding::decode_key(&mut self.rest).map_err(|_| MalformedValue("bad field key"))?;
        let value = match wire_type {
            WireType::Varint => FieldValue::Varint(self.varint()?),
            WireType::SixtyFourBit => FieldValue::Fixed64(u64::from_le_bytes(
                self.take(8)?
                    .try_into()
                    .map_err(|_| MalformedValue("short number"))?,
            )),
            WireType::LengthDelimited => {
                let length = usize::try_from(self.varint()?)
                    .map_err(|_| MalformedValue("length out of range"))?;
                FieldValue::Delimited(self.take(length)?)
            }
            WireType::ThirtyTwoBit => {
                self.take(4)?;
                FieldValue::Other
            }
            WireType::StartGroup | WireType::EndGroup => {
                return Err(MalformedValue("groups are not used by Value"))
            }
        };
        Ok(Some((tag, value)))
    }

    fn varint(&mut self) -> Result<u64, MalformedValue> {
        encoding::decode_varint(&mut self.rest).map_err(|_| MalformedValue("bad varint"))
    }

    fn take(&mut self, length: usize) -> Result<&'a [u8], MalformedValue> {
        if self.rest.len() < length {
            return Err(MalformedValue("field runs past the end"));
        }
        let (taken, rest) = self.rest.split_at(length);
        self.rest = rest;
        Ok(taken)
    }
}

fn decode_value(wire: &[u8], depth: u32) -> Result<Value, MalformedValue> {
    if depth > MAX_DEPTH {
        return Err(MalformedValue("nested too deeply"));
    }
    let mut fields = Fields { rest: wire };
    // A Value with no kind set reads as null, as with prost's own types; the last kind wins, as for a oneof.
    let mut json = Value::Null;
    while let Some((tag, value)) = fields.next_field()? {
        json = match (tag, value) {
            (field::NULL, FieldValue::Varint(_)) => Value::Null,
            (field::NUMBER, FieldValue::Fixed64(bits)) => number_to_json(f64::from_bits(bits)),
            (field::STRING, FieldValue::Delimited(text)) => Value::String(utf8(text)?),
            (field::BOOL, FieldValue::Varint(flag)) => Value::Bool(flag != 0),
            (field::STRUCT, FieldValue::Delimited(content)) => decode_struct(content, depth)?,
            (field::LIST, FieldValue::Delimited(content)) => decode_list(content, depth)?,
            (field::NULL..=field::LIST, _) => return Err(MalformedValue("wrong wire type")),
            _ => continue,
        };
    }
    Ok(json)
}

fn decode_struct(wire: &[u8], depth: u32) -> Result<Value, MalformedValue> {
    let mut object = Map::new();
    let mut entries = Fields { rest: wire };
    while let Some((tag, entry)) = entries.next_field()? {
        let FieldValue::Delimited(entry) = entry else {
            continue;
        };
        if tag != field::ITEM {
            continue;
        }
        let mut name = String::new();
        let mut value = Value::Null;
        let mut parts = Fields { rest: entry };
        while let Some((tag, part)) = parts.next_field()? {
            match (tag, part) {
                (field::ENTRY_KEY, FieldValue::Delimited(text)) => name = utf8(text)?,
                (field::ENTRY_VALUE, FieldValue::Delimited(content)) => {
                    value = decode_value(content, depth + 1)?
                }
                _ => {}
            }
        }
        object.insert(name, value);
    }
    Ok(Value::Object(object))
}

fn decode_list(wire: &[u8], depth: u32) -> Result<Value, MalformedValue> {
    let mut items = Vec::new();
    let mut fields = Fields { rest: wire };
    while let Some((tag, item)) = fields.next_field()? {
        if let (field::ITEM, FieldValue::Delimited(content)) = (tag, item) {
            items.push(decode_value(content, depth + 1)?);
        }
    }
    Ok(Value::Array(items))
}

fn utf8(bytes: &[u8]) -> Result<String, MalformedValue> {
    String::from_utf8(bytes.to_vec()).map_err(|_| MalformedValue("string is not utf-8"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use serde_json::json;

    fn sample() -> Value {
        json!({
            "tickets": [
                {"number": 12, "state": "opened", "tags": ["a", "b"], "assignee": null, "open": true},
                {"number": 13, "ratio": 0.25, "nested": {"deeper": {"deepest": []}}, "empty": {}},
            ],
            "meta": {"pagination": {"current_page": 1, "next_page": null}},
            "long": "x".repeat(300),
        })
    }

    #[test]
    fn encodes_exactly_as_prost_does() {
        let prost_value = crate::api::json::json_to_value(&sample());
        let ours = JsonValue::from_json(&sample());
        // prost writes map entries in key order; so does serde_json's default (sorted) map.
        assert_eq!(ours.as_encoded(), prost_value.encode_to_vec().as_slice());
    }

    #[test]
    fn round_trips_through_prost_decoding() {
        let ours = JsonValue::from_json(&sample());
        let decoded_by_prost = prost_types::Value::decode(ours.as_encoded()).unwrap();
        assert_eq!(crate::api::json::value_to_json(&decoded_by_prost), sample());
        assert_eq!(ours.to_json().unwrap(), sample());
    }

    #[test]
    fn decodes_as_a_message_field_and_re_encodes_the_same_bytes() {
        let response = crate::proto::GrooveResponse {
            http_status: 200,
            headers: Vec::new(),
            body: Some(crate::proto::groove_response::Body::Json(
                JsonValue::from_json(&sample()),
            )),
        };
        let bytes = response.encode_to_vec();
        let decoded = crate::proto::GrooveResponse::decode(bytes.as_slice()).unwrap();
        assert_eq!(decoded, response);
        assert_eq!(decoded.encode_to_vec(), bytes);
    }

    #[test]
    fn scalars_and_empty_containers() {
        for json in [
            json!(null),
            json!(true),
            json!(-3),
            json!(""),
            json!([]),
            json!({}),
        ] {
            let ours = JsonValue::from_json(&json);
            assert_eq!(
                ours.as_encoded(),
                crate::api::json::json_to_value(&json)
                    .encode_to_vec()
                    .as_slice(),
                "{json}"
            );
            assert_eq!(ours.to_json().unwrap(), json);
        }
    }

    #[test]
    fn malformed_bytes_are_an_error_not_a_panic() {
        let whole = JsonValue::from_json(&sample()).wire;
        for cut in 1..whole.len() {
            let truncated = JsonValue {
                wire: whole[..cut].to_vec(),
            };
            // Any cut either fails or (at a field boundary of the outer Value) reads as something; never panics.
            let _ = truncated.to_json();
        }
        let string_with_bad_utf8 = JsonValue {
            wire: vec![key(field::STRING, WireType::LengthDelimited), 1, 0xff],
        };
        assert_eq!(
            string_with_bad_utf8.to_json(),
            Err(MalformedValue("string is not utf-8"))
        );
    }

    #[test]
    fn deep_nesting_is_refused() {
        let mut wire = Vec::new();
        for _ in 0..200 {
            let inner = std::mem::take(&mut wire);
            let mut list_content = Vec::new();
            encoding::bytes::encode(field::ITEM, &inner, &mut list_content);
            encoding::bytes::encode(field::LIST, &list_content, &mut wire);
        }
        let deep = JsonValue { wire };
        assert_eq!(deep.to_json(), Err(MalformedValue("nested too deeply")));
    }

    /// `{"a": {"a": … {"leaf": true}}}`, `levels` objects deep.
    fn nested_object(levels: usize) -> Value {
        let mut json = json!({"leaf": true});
        for _ in 1..levels {
            json = json!({ "a": json });
        }
        json
    }

    #[test]
    fn a_struct_round_trips_through_prost() {
        let Value::Object(object) = sample() else {
            unreachable!()
        };
        let ours = JsonObject::from_json(&object);
        let prost_struct = prost_types::Struct::decode(ours.encode_to_vec().as_slice()).unwrap();
        assert_eq!(prost_struct.encode_to_vec(), ours.encode_to_vec());
        assert_eq!(ours.to_json().unwrap(), sample());
    }

    #[test]
    fn a_record_nested_64_levels_decodes_inside_a_stream_message() {
        let Value::Object(object) = nested_object(64) else {
            unreachable!()
        };
        let request = crate::proto::SendRecordsRequest {
            message: Some(crate::proto::send_records_request::Message::Records(
                crate::proto::RecordBatch {
                    records: vec![crate::proto::Record {
                        id: "deep".to_string(),
                        data: Some(crate::proto::record::Data::Json(JsonObject::from_json(
                            &object,
                        ))),
                    }],
                },
            )),
        };
        let decoded =
            crate::proto::SendRecordsRequest::decode(request.encode_to_vec().as_slice()).unwrap();
        let Some(crate::proto::send_records_request::Message::Records(batch)) = decoded.message
        else {
            panic!("records expected")
        };
        let Some(crate::proto::record::Data::Json(record)) = &batch.records[0].data else {
            panic!("json expected")
        };
        assert_eq!(record.to_json().unwrap(), nested_object(64));
        // prost's own Struct gives up far earlier: this is what the stream used to die of.
        assert!(prost_types::Struct::decode(record.encode_to_vec().as_slice()).is_err());
    }

    #[test]
    fn a_struct_nested_past_the_limit_is_an_error_for_that_record_only() {
        let Value::Object(object) = nested_object(MAX_DEPTH as usize + 2) else {
            unreachable!()
        };
        let deep = JsonObject::from_json(&object);
        assert_eq!(deep.to_json(), Err(MalformedValue("nested too deeply")));
    }
}
