//! Reading a request's form parameters (strings, integers, booleans, metadata) and paging lists.

use serde_json::{Value, json};

use crate::error::{ApiErr, ApiResult};
use crate::objects;

pub(super) fn str_param<'a>(p: &'a Value, key: &str) -> Option<&'a str> {
    p.get(key).and_then(Value::as_str).filter(|s| !s.is_empty())
}

pub(super) fn req_str<'a>(p: &'a Value, key: &str) -> Result<&'a str, ApiErr> {
    str_param(p, key).ok_or_else(|| ApiErr::param_missing(key))
}

pub(super) fn int_param(p: &Value, key: &str) -> Result<Option<i64>, ApiErr> {
    match str_param(p, key) {
        None => Ok(None),
        Some(s) => s.parse().map(Some).map_err(|_| {
            ApiErr::invalid(
                "parameter_invalid_integer",
                format!("Invalid integer: {s}"),
                Some(key),
            )
        }),
    }
}

pub(super) fn bool_param(p: &Value, key: &str) -> Result<Option<bool>, ApiErr> {
    match str_param(p, key) {
        None => Ok(None),
        Some("true") => Ok(Some(true)),
        Some("false") => Ok(Some(false)),
        Some(s) => Err(ApiErr::invalid(
            "parameter_invalid_boolean",
            format!("Invalid boolean: {s}"),
            Some(key),
        )),
    }
}

pub(super) fn metadata(p: &Value, key: &str) -> Value {
    match p.get(key) {
        Some(Value::Object(m)) => Value::Object(m.clone()),
        _ => json!({}),
    }
}

/// `limit` and `starting_after` applied to `items` (already newest first).
pub(super) fn page(items: Vec<Value>, params: &Value, url: &str) -> ApiResult {
    let limit = int_param(params, "limit")?.unwrap_or(10);
    if !(1..=100).contains(&limit) {
        return Err(ApiErr::invalid(
            "parameter_invalid_integer",
            "limit must be between 1 and 100",
            Some("limit"),
        ));
    }
    let start = match str_param(params, "starting_after") {
        Some(after) => items
            .iter()
            .position(|v| v["id"] == after)
            .map(|i| i + 1)
            .ok_or_else(|| ApiErr::missing("object", after, Some("starting_after")))?,
        None => 0,
    };
    let rest: Vec<Value> = items.into_iter().skip(start).collect();
    let has_more = rest.len() > limit as usize;
    Ok(objects::list(
        rest.into_iter().take(limit as usize).collect(),
        has_more,
        url,
    ))
}
