//! A call's JSON arguments as a Cedar value, built directly (never through Cedar's JSON
//! format, whose `__entity`/`__extn` escapes an agent's argument could otherwise spell).
//!
//! Integers are `Long`s, strings, booleans, arrays (sets) and objects (records) map to their
//! kind; a number that is no 64-bit integer becomes its decimal text; `null` leaves the field
//! out (Cedar has no null).

use cedar_policy::RestrictedExpression;
use serde_json::Value;

/// The arguments object as a record; anything else (no arguments) is the empty record.
pub fn record(arguments: &Value) -> Result<RestrictedExpression, String> {
    match arguments {
        Value::Object(_) => value(arguments).map(|v| v.expect("an object is never left out")),
        _ => RestrictedExpression::new_record([]).map_err(|e| e.to_string()),
    }
}

fn value(v: &Value) -> Result<Option<RestrictedExpression>, String> {
    Ok(Some(match v {
        Value::Null => return Ok(None),
        Value::Bool(b) => RestrictedExpression::new_bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => RestrictedExpression::new_long(i),
            None => RestrictedExpression::new_string(n.to_string()),
        },
        Value::String(s) => RestrictedExpression::new_string(s.clone()),
        Value::Array(items) => {
            let mut set = Vec::with_capacity(items.len());
            for item in items {
                set.extend(value(item)?);
            }
            RestrictedExpression::new_set(set)
        }
        Value::Object(fields) => {
            let mut record = Vec::with_capacity(fields.len());
            for (k, v) in fields {
                if let Some(v) = value(v)? {
                    record.push((k.clone(), v));
                }
            }
            RestrictedExpression::new_record(record).map_err(|e| e.to_string())?
        }
    }))
}
