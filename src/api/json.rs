//! JSON numbers from protobuf doubles, and (for tests) prost's own `Struct`/`Value` ⇄ JSON, the reference
//! `json_wire`'s encoding is checked against.

#[cfg(test)]
use prost_types::value::Kind;
#[cfg(test)]
use serde_json::Map;
use serde_json::{Number, Value};

/// Largest integer a double holds exactly; integral numbers up to it are written without a fraction, so that a
/// ticket number sent through a Struct (where every number is a double) renders as `12`, not `12.0`.
const MAX_EXACT_INTEGER: f64 = 9_007_199_254_740_992.0;

#[cfg(test)]
pub fn struct_to_json(record: &prost_types::Struct) -> Value {
    Value::Object(
        record
            .fields
            .iter()
            .map(|(key, value)| (key.clone(), value_to_json(value)))
            .collect::<Map<String, Value>>(),
    )
}

#[cfg(test)]
pub(crate) fn value_to_json(value: &prost_types::Value) -> Value {
    match &value.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(flag)) => Value::Bool(*flag),
        Some(Kind::StringValue(text)) => Value::String(text.clone()),
        Some(Kind::NumberValue(number)) => number_to_json(*number),
        Some(Kind::StructValue(object)) => struct_to_json(object),
        Some(Kind::ListValue(list)) => {
            Value::Array(list.values.iter().map(value_to_json).collect())
        }
    }
}

pub(crate) fn number_to_json(number: f64) -> Value {
    if number.fract() == 0.0 && number.abs() <= MAX_EXACT_INTEGER {
        return Value::Number(Number::from(number as i64));
    }
    // NaN and infinities have no JSON form.
    Number::from_f64(number).map_or(Value::Null, Value::Number)
}

#[cfg(test)]
pub fn json_to_value(json: &Value) -> prost_types::Value {
    let kind = match json {
        Value::Null => Kind::NullValue(0),
        Value::Bool(flag) => Kind::BoolValue(*flag),
        Value::Number(number) => Kind::NumberValue(number.as_f64().unwrap_or(0.0)),
        Value::String(text) => Kind::StringValue(text.clone()),
        Value::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.iter().map(json_to_value).collect(),
        }),
        Value::Object(fields) => Kind::StructValue(prost_types::Struct {
            fields: fields
                .iter()
                .map(|(key, value)| (key.clone(), json_to_value(value)))
                .collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn number(value: f64) -> prost_types::Value {
        prost_types::Value {
            kind: Some(Kind::NumberValue(value)),
        }
    }

    #[test]
    fn integral_numbers_stay_integers() {
        assert_eq!(value_to_json(&number(12.0)).to_string(), "12");
        assert_eq!(value_to_json(&number(1.5)).to_string(), "1.5");
        assert_eq!(value_to_json(&number(f64::NAN)), Value::Null);
    }

    #[test]
    fn json_round_trips_through_struct() {
        let original: Value = serde_json::json!({"a": [1, "x", null, {"b": true}], "c": 2.5});
        let Some(Kind::StructValue(record)) = json_to_value(&original).kind else {
            panic!("object expected");
        };
        assert_eq!(struct_to_json(&record), original);
    }
}
