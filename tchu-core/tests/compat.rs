//! The schema compatibility verdicts, table-driven: each row an old and a new schema, and
//! which directions the change breaks (new producer → old consumer, old producer → new
//! consumer).
#![cfg(feature = "codec")]

use serde_json::{Value, json};
use tchu_core::compat::{Change, apply_allow_list, diff, diff_sets};

/// (name, old, new, [(path, change, breaks new→old, breaks old→new)]).
type Row = (
    &'static str,
    Value,
    Value,
    &'static [(&'static str, &'static str, bool, bool)],
);

fn obj(props: Value, required: &[&str]) -> Value {
    json!({ "type": "object", "properties": props, "required": required })
}

fn u32_() -> Value {
    json!({ "type": "integer", "format": "uint32", "minimum": 0 })
}

fn u64_() -> Value {
    json!({ "type": "integer", "format": "uint64", "minimum": 0 })
}

#[rustfmt::skip]
#[allow(clippy::too_many_lines, reason = "a table of fixtures, one row per change")]
fn rows() -> Vec<Row> {
    vec![
        ("identical", obj(json!({"id": u64_()}), &["id"]), obj(json!({"id": u64_()}), &["id"]), &[]),
        ("required field added", obj(json!({"id": u64_()}), &["id"]),
            obj(json!({"id": u64_(), "note": {"type": "string"}}), &["id", "note"]),
            &[("$.note", "field added (required)", false, true)]),
        ("optional field added", obj(json!({"id": u64_()}), &["id"]),
            obj(json!({"id": u64_(), "note": {"type": ["string", "null"]}}), &["id"]),
            &[("$.note", "field added (optional)", false, false)]),
        ("field with a default added", obj(json!({"id": u64_()}), &["id"]),
            obj(json!({"id": u64_(), "n": {"type": "integer", "format": "int32", "default": 0}}), &["id"]),
            &[("$.n", "field added (optional)", false, false)]),
        ("required field removed", obj(json!({"id": u64_(), "x": {"type": "string"}}), &["id", "x"]),
            obj(json!({"id": u64_()}), &["id"]),
            &[("$.x", "field removed (was required)", true, false)]),
        ("optional field removed", obj(json!({"id": u64_(), "x": {"type": "string"}}), &["id"]),
            obj(json!({"id": u64_()}), &["id"]),
            &[("$.x", "field removed (was optional)", false, false)]),
        ("field renamed", obj(json!({"user_id": u64_()}), &["user_id"]),
            obj(json!({"customer_id": u64_()}), &["customer_id"]),
            &[("$.customer_id", "field added (required)", false, true),
              ("$.user_id", "field removed (was required)", true, false)]),
        ("optional became required", obj(json!({"x": {"type": "string"}}), &[]),
            obj(json!({"x": {"type": "string"}}), &["x"]),
            &[("$.x", "became required", false, true)]),
        ("required became optional", obj(json!({"x": {"type": "string"}}), &["x"]),
            obj(json!({"x": {"type": "string"}}), &[]),
            &[("$.x", "became optional", true, false)]),
        ("string to integer", obj(json!({"x": {"type": "string"}}), &["x"]),
            obj(json!({"x": {"type": "integer"}}), &["x"]),
            &[("$.x", "type changed", true, true)]),
        ("integer widened to number", obj(json!({"x": {"type": "integer"}}), &["x"]),
            obj(json!({"x": {"type": "number"}}), &["x"]),
            &[("$.x", "type widened", true, false)]),
        ("number narrowed to integer", obj(json!({"x": {"type": "number"}}), &["x"]),
            obj(json!({"x": {"type": "integer"}}), &["x"]),
            &[("$.x", "type narrowed", false, true)]),
        ("u32 widened to u64", obj(json!({"x": u32_()}), &["x"]), obj(json!({"x": u64_()}), &["x"]),
            &[("$.x", "range widened", true, false)]),
        ("u64 narrowed to u32", obj(json!({"x": u64_()}), &["x"]), obj(json!({"x": u32_()}), &["x"]),
            &[("$.x", "range narrowed", false, true)]),
        ("i32 to u32", obj(json!({"x": {"type": "integer", "format": "int32"}}), &["x"]),
            obj(json!({"x": u32_()}), &["x"]),
            &[("$.x", "range changed", true, true)]),
        ("minimum raised", obj(json!({"x": {"type": "integer", "minimum": 0}}), &["x"]),
            obj(json!({"x": {"type": "integer", "minimum": 10}}), &["x"]),
            &[("$.x", "range narrowed", false, true)]),
        ("string format added", obj(json!({"at": {"type": "string"}}), &["at"]),
            obj(json!({"at": {"type": "string", "format": "date-time"}}), &["at"]),
            &[("$.at", "string format changed", false, true)]),
        ("string format dropped", obj(json!({"at": {"type": "string", "format": "uuid"}}), &["at"]),
            obj(json!({"at": {"type": "string"}}), &["at"]),
            &[("$.at", "string format changed", true, false)]),
        ("became nullable", obj(json!({"x": {"type": "string"}}), &["x"]),
            obj(json!({"x": {"type": ["string", "null"]}}), &["x"]),
            &[("$.x", "became nullable", true, false)]),
        ("no longer nullable", obj(json!({"x": {"type": ["string", "null"]}}), &["x"]),
            obj(json!({"x": {"type": "string"}}), &["x"]),
            &[("$.x", "no longer nullable", false, true)]),
        ("nullable through anyOf",
            json!({"type": "object", "properties": {"x": {"$ref": "#/$defs/A"}}, "required": ["x"],
                   "$defs": {"A": {"type": "string"}}}),
            json!({"type": "object", "properties": {"x": {"anyOf": [{"$ref": "#/$defs/A"}, {"type": "null"}]}},
                   "required": ["x"], "$defs": {"A": {"type": "string"}}}),
            &[("$.x", "became nullable", true, false)]),
        ("enum value added", obj(json!({"s": {"type": "string", "enum": ["a", "b"]}}), &["s"]),
            obj(json!({"s": {"type": "string", "enum": ["a", "b", "c"]}}), &["s"]),
            &[("$.s", "value added", true, false)]),
        ("enum value removed", obj(json!({"s": {"type": "string", "enum": ["a", "b"]}}), &["s"]),
            obj(json!({"s": {"type": "string", "enum": ["a"]}}), &["s"]),
            &[("$.s", "value removed", false, true)]),
        ("serde enum variant added",
            json!({"oneOf": [{"type": "string", "const": "Card"}, {"type": "object", "properties": {"Iban": {"type": "string"}}, "required": ["Iban"]}]}),
            json!({"oneOf": [{"type": "string", "const": "Card"}, {"type": "object", "properties": {"Iban": {"type": "string"}}, "required": ["Iban"]},
                             {"type": "string", "const": "Cash"}]}),
            &[("$", "variant added", true, false)]),
        ("serde enum variant removed",
            json!({"oneOf": [{"type": "string", "const": "Card"}, {"type": "string", "const": "Cash"}]}),
            json!({"oneOf": [{"type": "string", "const": "Card"}]}),
            &[("$", "variant removed", false, true)]),
        ("nested field added through $ref",
            json!({"type": "object", "properties": {"addr": {"$ref": "#/$defs/Addr"}}, "required": ["addr"],
                   "$defs": {"Addr": obj(json!({"city": {"type": "string"}}), &["city"])}}),
            json!({"type": "object", "properties": {"addr": {"$ref": "#/$defs/Addr"}}, "required": ["addr"],
                   "$defs": {"Addr": obj(json!({"city": {"type": "string"}, "zip": {"type": "string"}}), &["city", "zip"])}}),
            &[("$.addr.zip", "field added (required)", false, true)]),
        ("nested type changed", obj(json!({"o": obj(json!({"n": u32_()}), &["n"])}), &["o"]),
            obj(json!({"o": obj(json!({"n": {"type": "string"}}), &["n"])}), &["o"]),
            &[("$.o.n", "type changed", true, true)]),
        ("array items changed", obj(json!({"xs": {"type": "array", "items": {"type": "string"}}}), &["xs"]),
            obj(json!({"xs": {"type": "array", "items": {"type": "integer"}}}), &["xs"]),
            &[("$.xs[]", "type changed", true, true)]),
        ("array of objects, field added", obj(json!({"xs": {"type": "array", "items": obj(json!({"a": u32_()}), &["a"])}}), &["xs"]),
            obj(json!({"xs": {"type": "array", "items": obj(json!({"a": u32_(), "b": u32_()}), &["a", "b"])}}), &["xs"]),
            &[("$.xs[].b", "field added (required)", false, true)]),
        ("array became a string", obj(json!({"xs": {"type": "array", "items": {"type": "string"}}}), &["xs"]),
            obj(json!({"xs": {"type": "string"}}), &["xs"]),
            &[("$.xs", "type changed", true, true)]),
        ("unknown fields refused", obj(json!({"a": u32_()}), &["a"]),
            json!({"type": "object", "properties": {"a": u32_()}, "required": ["a"], "additionalProperties": false}),
            &[("$", "unknown fields refused", false, true)]),
        ("unknown fields accepted again",
            json!({"type": "object", "properties": {"a": u32_()}, "required": ["a"], "additionalProperties": false}),
            obj(json!({"a": u32_()}), &["a"]),
            &[("$", "unknown fields accepted", false, false)]),
        ("optional field added to a closed object",
            json!({"type": "object", "properties": {"a": u32_()}, "required": ["a"], "additionalProperties": false}),
            json!({"type": "object", "properties": {"a": u32_(), "b": u32_()}, "required": ["a"], "additionalProperties": false}),
            &[("$.b", "field added (optional)", true, false)]),
        ("optional field removed from a closed object",
            json!({"type": "object", "properties": {"a": u32_(), "b": u32_()}, "required": ["a"], "additionalProperties": false}),
            json!({"type": "object", "properties": {"a": u32_()}, "required": ["a"], "additionalProperties": false}),
            &[("$.b", "field removed (was optional)", false, true)]),
        ("description only", obj(json!({"a": {"type": "string", "description": "old"}}), &["a"]),
            obj(json!({"a": {"type": "string", "description": "new"}}), &["a"]), &[]),
        ("field reordered", obj(json!({"a": u32_(), "b": u32_()}), &["a", "b"]),
            obj(json!({"b": u32_(), "a": u32_()}), &["b", "a"]), &[]),
    ]
}

#[test]
fn every_change_gets_its_verdict_in_both_directions() {
    let rows = rows();
    assert!(rows.len() >= 30, "{} rows", rows.len());
    for (name, old, new, want) in rows {
        let mut got = Vec::new();
        diff("t", &old, &new, &mut got);
        let got: Vec<(String, String, bool, bool)> = got
            .into_iter()
            .map(|c| (c.path, c.what, c.breaks_new_to_old, c.breaks_old_to_new))
            .collect();
        let want: Vec<(String, String, bool, bool)> = want
            .iter()
            .map(|(p, w, a, b)| ((*p).to_owned(), (*w).to_owned(), *a, *b))
            .collect();
        assert_eq!(got, want, "{name}");
    }
}

fn set(entries: &[(&str, Value)]) -> std::collections::BTreeMap<String, Value> {
    entries
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

#[test]
fn topics_added_and_removed_and_rpc_parts() {
    let old = set(&[
        ("order.placed", obj(json!({"id": u64_()}), &["id"])),
        (
            "rpc.quote",
            obj(json!({"sku": {"type": "string"}}), &["sku"]),
        ),
        (
            "rpc.quote.response",
            obj(json!({"cents": u64_()}), &["cents"]),
        ),
    ]);
    let new = set(&[
        ("order.shipped", obj(json!({"id": u64_()}), &["id"])),
        (
            "rpc.quote",
            obj(json!({"sku": {"type": "string"}}), &["sku"]),
        ),
        (
            "rpc.quote.response",
            obj(json!({"cents": u32_()}), &["cents"]),
        ),
        (
            "rpc.quote.error",
            obj(json!({"code": {"type": "string"}}), &["code"]),
        ),
    ]);
    let got: Vec<(String, String, &str)> = diff_sets(&old, &new)
        .iter()
        .map(|c| (c.subject.clone(), c.what.clone(), c.directions()))
        .collect();
    let want = [
        ("order.placed", "removed", "old→new"),
        ("order.shipped", "added", "-"),
        ("rpc.quote.error", "added", "-"),
        ("rpc.quote.response", "range narrowed", "old→new"),
    ];
    let want: Vec<(String, String, &str)> = want
        .iter()
        .map(|(s, w, d)| ((*s).to_owned(), (*w).to_owned(), *d))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn an_allow_list_accepts_a_subject_or_one_path() {
    let old = set(&[("a.b", obj(json!({"x": u64_(), "y": u64_()}), &["x", "y"]))]);
    let new = set(&[("a.b", obj(json!({}), &[]))]);
    let mut changes = diff_sets(&old, &new);
    assert!(changes.iter().all(Change::is_breaking));
    apply_allow_list(&mut changes, "# accepted in review\na.b $.x\n");
    let breaking: Vec<&str> = changes
        .iter()
        .filter(|c| c.is_breaking())
        .map(|c| c.path.as_str())
        .collect();
    assert_eq!(breaking, vec!["$.y"]);
    apply_allow_list(&mut changes, "a.b");
    assert!(!changes.iter().any(Change::is_breaking));
}
