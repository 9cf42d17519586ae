//! Canonical JSON and its digest: the form every content-addressed id is computed from.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// sha256 of the canonical JSON form of `value`.
pub fn digest(value: &Value) -> String {
    hex::encode(Sha256::digest(canonical_json(value).as_bytes()))
}

/// JSON with object keys sorted at every level and no whitespace. Sorting here, rather than
/// relying on the map type, keeps ids stable whether or not serde_json's `preserve_order`
/// feature is switched on by some dependency.
pub fn canonical_json(value: &Value) -> String {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let fields: Vec<String> = keys
                .into_iter()
                .map(|k| format!("{}:{}", Value::String(k.clone()), canonical_json(&map[k])))
                .collect();
            format!("{{{}}}", fields.join(","))
        }
        Value::Array(items) => format!(
            "[{}]",
            items
                .iter()
                .map(canonical_json)
                .collect::<Vec<_>>()
                .join(",")
        ),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_form_sorts_keys_at_every_level() {
        let v: Value = serde_json::from_str(r#"{"b":[{"z":1,"a":2}],"a":"x"}"#).unwrap();
        assert_eq!(canonical_json(&v), r#"{"a":"x","b":[{"a":2,"z":1}]}"#);
    }

    #[test]
    fn digest_ignores_key_order() {
        let a: Value = serde_json::from_str(r#"{"a":1,"b":{"c":2,"d":3}}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"b":{"d":3,"c":2},"a":1}"#).unwrap();
        assert_eq!(digest(&a), digest(&b));
        let c: Value = serde_json::from_str(r#"{"b":{"d":3,"c":2},"a":2}"#).unwrap();
        assert_ne!(digest(&a), digest(&c));
    }
}
