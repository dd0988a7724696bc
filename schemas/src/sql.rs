//! ClickHouse SQL literals built client-side (18.16 has no server-side parameters for `IN` lists).

/// Appends `s` as a ClickHouse string literal (backslash and quote escaped).
pub fn quote(out: &mut String, s: &str) {
    out.push('\'');
    for c in s.chars() {
        if matches!(c, '\\' | '\'') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
}

/// `('a','b',...)` for `x IN (...)`.
pub fn in_list<'a>(values: impl Iterator<Item = &'a str>) -> String {
    let mut out = String::from("(");
    for (i, v) in values.enumerate() {
        if i > 0 {
            out.push(',');
        }
        quote(&mut out, v);
    }
    out.push(')');
    out
}

/// `(('a','b'),...)` for `(x, y) IN (...)`.
pub fn pairs<'a>(keys: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    let mut out = String::from("(");
    for (i, (a, b)) in keys.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('(');
        quote(&mut out, a);
        out.push(',');
        quote(&mut out, b);
        out.push(')');
    }
    out.push(')');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_are_escaped() {
        let mut s = String::new();
        quote(&mut s, r"a'b\c?");
        assert_eq!(s, r"'a\'b\\c?'");
        assert_eq!(in_list(["x", "y"].into_iter()), "('x','y')");
        assert_eq!(pairs([("t", "c'")].into_iter()), r"(('t','c\''))");
    }
}
