//! Stripe's form encoding (`a[b][0][c]=v`, as async-stripe sends it through `serde_qs`) parsed into JSON.

use serde_json::{Map, Value};

/// Parses `application/x-www-form-urlencoded` pairs with bracket notation into a JSON object.
/// Every leaf is a string (Stripe's own parser types values per endpoint); an all-digit key
/// segment makes an array.
pub(crate) fn parse(pairs: &[(String, String)]) -> Value {
    let mut root = Value::Object(Map::new());
    for (key, value) in pairs {
        let path = split_key(key);
        insert(&mut root, &path, value.clone());
    }
    arrays(root)
}

/// `a[b][c]` → `["a", "b", "c"]`; `a[]` appends (`""` segment).
fn split_key(key: &str) -> Vec<String> {
    let mut out = Vec::new();
    let (head, mut rest) = match key.find('[') {
        Some(i) => (&key[..i], &key[i..]),
        None => (key, ""),
    };
    out.push(head.to_string());
    while let Some(stripped) = rest.strip_prefix('[') {
        match stripped.find(']') {
            Some(end) => {
                out.push(stripped[..end].to_string());
                rest = &stripped[end + 1..];
            }
            None => {
                out.push(stripped.to_string());
                break;
            }
        }
    }
    out
}

fn insert(node: &mut Value, path: &[String], value: String) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    if !node.is_object() {
        *node = Value::Object(Map::new());
    }
    let Value::Object(map) = node else { return };
    let key = if first.is_empty() {
        // `a[]=x`: the next free index.
        map.len().to_string()
    } else {
        first.clone()
    };
    if rest.is_empty() {
        map.insert(key, Value::String(value));
    } else {
        let child = map.entry(key).or_insert_with(|| Value::Object(Map::new()));
        insert(child, rest, value);
    }
}

/// Objects whose keys are all indices become arrays (in index order).
fn arrays(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let all_digits = !map.is_empty()
                && map
                    .keys()
                    .all(|k| !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit()));
            if all_digits {
                let mut items: Vec<(usize, Value)> = map
                    .into_iter()
                    .map(|(k, v)| (k.parse().unwrap_or(usize::MAX), arrays(v)))
                    .collect();
                items.sort_by_key(|(i, _)| *i);
                Value::Array(items.into_iter().map(|(_, v)| v).collect())
            } else {
                Value::Object(map.into_iter().map(|(k, v)| (k, arrays(v))).collect())
            }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn brackets_nest_and_indices_make_arrays() {
        let v = parse(&pairs(&[
            ("mode", "subscription"),
            ("line_items[0][price]", "price_1"),
            ("line_items[0][quantity]", "1"),
            ("line_items[1][price]", "price_2"),
            ("metadata[tenant]", "acme"),
            ("expand[]", "a"),
            ("expand[]", "b"),
        ]));
        assert_eq!(
            v,
            json!({
                "mode": "subscription",
                "line_items": [{"price": "price_1", "quantity": "1"}, {"price": "price_2"}],
                "metadata": {"tenant": "acme"},
                "expand": ["a", "b"],
            })
        );
    }
}
