//! Schema compatibility between two versions of a service: every change between an old and a
//! new JSON Schema, and for each whether it breaks
//! - **new → old**: a new producer (or responder) against old consumers (callers), who must
//!   still decode what is now sent;
//! - **old → new**: old producers against the new consumer, which must still decode what old
//!   services send and what already waits in queues.
//!
//! The schemas are the ones `<service> schema --out DIR` writes (schemars, JSON Schema
//! 2020-12): one file per event (`<topic>.json`), response (`<topic>.response.json`) and error
//! (`<topic>.error.json`). Pure: no I/O; the command-line tools read the files.

use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet};

/// One change between two schemas, with its verdict in each direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The schema file's name without `.json`: the topic, plus `.response` or `.error`.
    pub subject: String,
    /// Where in the message: `$` for the whole, `$.order.id`, `$.lines[]`.
    pub path: String,
    /// What changed, in a few words (`field added (required)`, `type changed`, ...).
    pub what: String,
    /// A new producer breaks old consumers.
    pub breaks_new_to_old: bool,
    /// Old producers break the new consumer.
    pub breaks_old_to_new: bool,
    /// Why, for a person.
    pub why: String,
    /// Accepted by the allow-list: reported, not failing the gate.
    pub allowed: bool,
}

impl Change {
    /// Whether it breaks either direction (and is not allowed).
    pub fn is_breaking(&self) -> bool {
        (self.breaks_new_to_old || self.breaks_old_to_new) && !self.allowed
    }

    /// The directions it breaks, for the table: `new→old`, `old→new`, both, or `-`.
    pub fn directions(&self) -> &'static str {
        match (self.breaks_new_to_old, self.breaks_old_to_new) {
            (true, true) => "both",
            (true, false) => "new→old",
            (false, true) => "old→new",
            (false, false) => "-",
        }
    }

    /// The change as JSON, for `--json`.
    pub fn to_json(&self) -> Value {
        json!({
            "subject": self.subject,
            "path": self.path,
            "change": self.what,
            "breaks": {
                "new_producer_old_consumer": self.breaks_new_to_old,
                "old_producer_new_consumer": self.breaks_old_to_new,
            },
            "allowed": self.allowed,
            "why": self.why,
        })
    }
}

/// Compares two sets of schema files (name without `.json` → schema): topics added and
/// removed, and every change inside the schemas both have. Sorted by subject and path.
pub fn diff_sets(old: &BTreeMap<String, Value>, new: &BTreeMap<String, Value>) -> Vec<Change> {
    let mut out = Vec::new();
    for (subject, o) in old {
        match new.get(subject) {
            Some(n) => diff(subject, o, n, &mut out),
            None => out.push(change(
                subject,
                "$",
                "removed",
                (false, true),
                "the new version no longer has it: what old producers send (and what waits in \
                 queues) finds no decoder",
            )),
        }
    }
    for subject in new.keys().filter(|s| !old.contains_key(*s)) {
        out.push(change(
            subject,
            "$",
            "added",
            (false, false),
            "new: old services neither send nor expect it",
        ));
    }
    out.sort_by(|a, b| (&a.subject, &a.path).cmp(&(&b.subject, &b.path)));
    out
}

/// Every change between two schemas of one subject, appended to `out`.
pub fn diff(subject: &str, old: &Value, new: &Value, out: &mut Vec<Change>) {
    let cx = Cx {
        subject,
        old_root: old,
        new_root: new,
    };
    cx.walk(old, new, "$", out, 0);
}

/// Marks the changes an allow-list accepts. Each non-empty line not starting with `#` is a
/// subject (`order.placed`, `rpc.quote.response`), optionally followed by a path
/// (`order.placed $.note`); a subject alone accepts all its changes.
pub fn apply_allow_list(changes: &mut [Change], allow: &str) {
    let entries: Vec<(&str, Option<&str>)> = allow
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| match l.split_once(char::is_whitespace) {
            Some((s, p)) => (s, Some(p.trim())),
            None => (l, None),
        })
        .collect();
    for c in changes.iter_mut() {
        c.allowed = entries
            .iter()
            .any(|(s, p)| *s == c.subject && p.is_none_or(|p| p == c.path));
    }
}

/// The changes as a table (subject, path, change, breaks, why).
pub fn table(changes: &[Change]) -> String {
    let mut s = String::from("| subject | path | change | breaks | why |\n|---|---|---|---|---|\n");
    for c in changes {
        let breaks = if c.allowed {
            format!("{} (allowed)", c.directions())
        } else {
            c.directions().to_owned()
        };
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            c.subject, c.path, c.what, breaks, c.why
        ));
    }
    s
}

fn change(subject: &str, path: &str, what: &str, breaks: (bool, bool), why: &str) -> Change {
    Change {
        subject: subject.to_owned(),
        path: path.to_owned(),
        what: what.to_owned(),
        breaks_new_to_old: breaks.0,
        breaks_old_to_new: breaks.1,
        why: why.to_owned(),
        allowed: false,
    }
}

/// The two documents, for `$ref`s.
struct Cx<'a> {
    subject: &'a str,
    old_root: &'a Value,
    new_root: &'a Value,
}

/// How deep the walk goes (a recursive type through `$ref`s ends here).
const MAX_DEPTH: usize = 32;

impl Cx<'_> {
    fn push(&self, out: &mut Vec<Change>, path: &str, what: &str, b: (bool, bool), why: &str) {
        out.push(change(self.subject, path, what, b, why));
    }

    fn walk(&self, old: &Value, new: &Value, path: &str, out: &mut Vec<Change>, depth: usize) {
        if depth > MAX_DEPTH {
            return;
        }
        let (o, n) = (Shape::of(old, self.old_root), Shape::of(new, self.new_root));
        self.types(&o, &n, path, out);
        self.ranges(&o, &n, path, out);
        self.formats(&o, &n, path, out);
        self.values(&o.values, &n.values, path, out, "value");
        self.values(&o.variants, &n.variants, path, out, "variant");
        if o.types.contains("object") && n.types.contains("object") {
            self.objects(&o, &n, path, out, depth);
        }
        if let (Some(oi), Some(ni)) = (o.items, n.items) {
            self.walk(oi, ni, &format!("{path}[]"), out, depth + 1);
        }
    }

    /// Type sets: what a writer may send must be what the reader accepts (an integer is a
    /// number; `null` is nullability).
    fn types(&self, o: &Shape<'_>, n: &Shape<'_>, path: &str, out: &mut Vec<Change>) {
        if o.types == n.types || o.types.is_empty() || n.types.is_empty() {
            return;
        }
        let accepts = |reader: &BTreeSet<&str>, writer: &BTreeSet<&str>| {
            writer
                .iter()
                .all(|t| reader.contains(t) || (*t == "integer" && reader.contains("number")))
        };
        let b = (!accepts(&o.types, &n.types), !accepts(&n.types, &o.types));
        let (on, nn) = (o.types.contains("null"), n.types.contains("null"));
        fn strip<'s>(s: &BTreeSet<&'s str>) -> BTreeSet<&'s str> {
            s.iter().filter(|t| **t != "null").copied().collect()
        }
        if on != nn && strip(&o.types) == strip(&n.types) {
            let (what, why) = if nn {
                (
                    "became nullable",
                    "a new producer may send null, which old consumers refuse",
                )
            } else {
                (
                    "no longer nullable",
                    "old producers may send null, which the new consumer refuses",
                )
            };
            return self.push(out, path, what, b, why);
        }
        let why = format!("{} → {}", join(&o.types), join(&n.types));
        let what = match b {
            (false, true) => "type narrowed",
            (true, false) => "type widened",
            _ => "type changed",
        };
        self.push(out, path, what, b, &why);
    }

    /// Integer ranges (from `minimum`/`maximum` and schemars' `format`: `uint32`, `int64`...).
    fn ranges(&self, o: &Shape<'_>, n: &Shape<'_>, path: &str, out: &mut Vec<Change>) {
        let numeric = |s: &Shape<'_>| s.types.contains("integer") || s.types.contains("number");
        if o.range == n.range || !numeric(o) || !numeric(n) {
            return;
        }
        let within =
            |inner: (f64, f64), outer: (f64, f64)| inner.0 >= outer.0 && inner.1 <= outer.1;
        let b = (!within(n.range, o.range), !within(o.range, n.range));
        let what = match b {
            (false, false) => return,
            (true, false) => "range widened",
            (false, true) => "range narrowed",
            (true, true) => "range changed",
        };
        let why = format!("{} → {}", range_text(o.range), range_text(n.range));
        self.push(out, path, what, b, &why);
    }

    /// String formats: a reader with a format refuses what a writer without it may send.
    fn formats(&self, o: &Shape<'_>, n: &Shape<'_>, path: &str, out: &mut Vec<Change>) {
        if o.format == n.format || !(o.types.contains("string") || n.types.contains("string")) {
            return;
        }
        let b = (o.format.is_some(), n.format.is_some());
        let why = format!(
            "format {} → {}",
            o.format.unwrap_or("none"),
            n.format.unwrap_or("none")
        );
        self.push(out, path, "string format changed", b, &why);
    }

    /// Enum values or enum variants: what a writer may send must be among what the reader knows.
    fn values(
        &self,
        o: &Option<BTreeSet<String>>,
        n: &Option<BTreeSet<String>>,
        path: &str,
        out: &mut Vec<Change>,
        noun: &str,
    ) {
        let (Some(o), Some(n)) = (o, n) else { return };
        for added in n.difference(o) {
            let why = format!("old consumers do not know {noun} {added}");
            self.push(out, path, &format!("{noun} added"), (true, false), &why);
        }
        for removed in o.difference(n) {
            let why = format!("old producers may still send {noun} {removed}");
            self.push(out, path, &format!("{noun} removed"), (false, true), &why);
        }
    }

    fn objects(
        &self,
        o: &Shape<'_>,
        n: &Shape<'_>,
        path: &str,
        out: &mut Vec<Change>,
        depth: usize,
    ) {
        let names: BTreeSet<&str> = o.props.keys().chain(n.props.keys()).copied().collect();
        for name in names {
            let p = format!("{path}.{name}");
            let (or, nr) = (o.required.contains(name), n.required.contains(name));
            match (o.props.get(name), n.props.get(name)) {
                (None, Some(_)) => self.added(o, &p, nr, out),
                (Some(_), None) => self.removed(n, &p, or, out),
                (Some(os), Some(ns)) => {
                    if or != nr {
                        let (what, b, why) = if nr {
                            (
                                "became required",
                                (false, true),
                                "old producers may omit it",
                            )
                        } else {
                            ("became optional", (true, false), "old consumers require it")
                        };
                        self.push(out, &p, what, b, why);
                    }
                    self.walk(os, ns, &p, out, depth + 1);
                }
                (None, None) => {}
            }
        }
        if o.closed != n.closed {
            let (what, b, why) = if n.closed {
                (
                    "unknown fields refused",
                    (false, true),
                    "old producers' extra fields are now refused",
                )
            } else {
                (
                    "unknown fields accepted",
                    (false, false),
                    "the new version tolerates extra fields",
                )
            };
            self.push(out, path, what, b, why);
        }
    }

    fn added(&self, o: &Shape<'_>, path: &str, required: bool, out: &mut Vec<Change>) {
        let (what, mut b, why) = if required {
            (
                "field added (required)",
                (false, true),
                "old producers do not send it; give it a default to stay compatible",
            )
        } else {
            (
                "field added (optional)",
                (false, false),
                "old producers omit it, which is allowed",
            )
        };
        if o.closed {
            b.0 = true;
        }
        let why = if o.closed {
            "old consumers refuse unknown fields".to_owned()
        } else {
            why.to_owned()
        };
        self.push(out, path, what, b, &why);
    }

    fn removed(&self, n: &Shape<'_>, path: &str, required: bool, out: &mut Vec<Change>) {
        let b = (required, n.closed);
        let why = match (required, n.closed) {
            (true, _) => "old consumers require it and new producers no longer send it",
            (false, true) => {
                "the new consumer refuses it as an unknown field, and old producers send it"
            }
            (false, false) => "optional: old consumers do without it; the new one ignores it",
        };
        let what = if required {
            "field removed (was required)"
        } else {
            "field removed (was optional)"
        };
        self.push(out, path, what, b, why);
    }
}

/// What the comparison needs of one schema, `$ref`s and `allOf`s resolved.
struct Shape<'a> {
    types: BTreeSet<&'a str>,
    props: BTreeMap<&'a str, &'a Value>,
    required: BTreeSet<&'a str>,
    /// `additionalProperties: false` (serde's `deny_unknown_fields`).
    closed: bool,
    items: Option<&'a Value>,
    /// Integer range, from `minimum`/`maximum` and the format.
    range: (f64, f64),
    /// A string format (`date-time`, `uuid`...); integer formats are ranges.
    format: Option<&'a str>,
    /// `enum` / `const` values.
    values: Option<BTreeSet<String>>,
    /// The variant names of a serde enum written as `oneOf`.
    variants: Option<BTreeSet<String>>,
}

impl<'a> Shape<'a> {
    fn of(schema: &'a Value, root: &'a Value) -> Self {
        let mut shape = Shape {
            types: BTreeSet::new(),
            props: BTreeMap::new(),
            required: BTreeSet::new(),
            closed: false,
            items: None,
            range: (f64::NEG_INFINITY, f64::INFINITY),
            format: None,
            values: None,
            variants: None,
        };
        shape.absorb(schema, root, 0);
        shape
    }

    /// Adds what one (sub)schema says.
    fn absorb(&mut self, schema: &'a Value, root: &'a Value, depth: usize) {
        let Some(s) = resolve(schema, root).as_object() else {
            if schema == &Value::Bool(true) {
                self.types.extend(["any"]);
            }
            return;
        };
        if depth > MAX_DEPTH {
            return;
        }
        match s.get("type") {
            Some(Value::String(t)) => {
                self.types.insert(t);
            }
            Some(Value::Array(ts)) => self.types.extend(ts.iter().filter_map(Value::as_str)),
            _ => {}
        }
        self.object_parts(s);
        self.scalar_parts(s);
        for key in ["anyOf", "oneOf"] {
            if let Some(Value::Array(alts)) = s.get(key) {
                self.alternatives(alts, root, depth);
            }
        }
        if let Some(Value::Array(all)) = s.get("allOf") {
            for a in all {
                self.absorb(a, root, depth + 1);
            }
        }
    }

    fn object_parts(&mut self, s: &'a Map<String, Value>) {
        if let Some(Value::Object(props)) = s.get("properties") {
            self.types.insert("object");
            self.props
                .extend(props.iter().map(|(k, v)| (k.as_str(), v)));
        }
        if let Some(Value::Array(req)) = s.get("required") {
            self.required.extend(req.iter().filter_map(Value::as_str));
        }
        if s.get("additionalProperties") == Some(&Value::Bool(false)) {
            self.closed = true;
        }
        if let Some(items) = s.get("items").filter(|i| i.is_object()) {
            self.items = Some(items);
        }
    }

    fn scalar_parts(&mut self, s: &'a Map<String, Value>) {
        let format = s.get("format").and_then(Value::as_str);
        match format.and_then(int_range) {
            Some(r) => self.range = intersect(self.range, r),
            None if format.is_some() => self.format = format,
            None => {}
        }
        if let Some(min) = s.get("minimum").and_then(Value::as_f64) {
            self.range.0 = self.range.0.max(min);
        }
        if let Some(max) = s.get("maximum").and_then(Value::as_f64) {
            self.range.1 = self.range.1.min(max);
        }
        let listed = match (s.get("enum"), s.get("const")) {
            (Some(Value::Array(vs)), _) => Some(vs.iter().map(Value::to_string).collect()),
            (_, Some(c)) => Some(BTreeSet::from([c.to_string()])),
            _ => None,
        };
        if let Some(vs) = listed {
            self.values.get_or_insert_with(BTreeSet::new).extend(vs);
        }
    }

    /// `anyOf`/`oneOf`: `Option<T>` (T or null), or a serde enum's variants.
    fn alternatives(&mut self, alts: &'a [Value], root: &'a Value, depth: usize) {
        let non_null: Vec<&Value> = alts
            .iter()
            .filter(|a| resolve(a, root).get("type") != Some(&Value::String("null".into())))
            .collect();
        if non_null.len() < alts.len() {
            self.types.insert("null");
        }
        // `Option<T>`: T or null. A one-variant enum stays an enum.
        if let ([only], true) = (&non_null[..], non_null.len() < alts.len()) {
            return self.absorb(only, root, depth + 1);
        }
        let mut names = BTreeSet::new();
        for a in &non_null {
            let a = resolve(a, root);
            match (a.get("const"), a.get("enum"), a.get("required")) {
                (Some(c), _, _) => {
                    names.insert(c.to_string());
                }
                (_, Some(Value::Array(vs)), _) => names.extend(vs.iter().map(Value::to_string)),
                (_, _, Some(Value::Array(req))) if req.len() == 1 => {
                    names.extend(req.iter().map(Value::to_string));
                }
                _ => {
                    names.insert(a.to_string());
                }
            }
            if let Some(Value::String(t)) = a.get("type") {
                self.types.insert(t);
            }
        }
        self.variants
            .get_or_insert_with(BTreeSet::new)
            .extend(names);
    }
}

/// Follows `$ref`s into the root's `$defs` / `definitions` (bounded).
fn resolve<'a>(mut schema: &'a Value, root: &'a Value) -> &'a Value {
    for _ in 0..MAX_DEPTH {
        let Some(r) = schema.get("$ref").and_then(Value::as_str) else {
            return schema;
        };
        let Some(target) = r.strip_prefix('#').and_then(|p| root.pointer(p)) else {
            return schema;
        };
        schema = target;
    }
    schema
}

/// The range of schemars' integer formats.
fn int_range(format: &str) -> Option<(f64, f64)> {
    Some(match format {
        "uint8" => (0.0, 255.0),
        "uint16" => (0.0, 65_535.0),
        "uint32" => (0.0, 4_294_967_295.0),
        "uint64" | "uint" => (0.0, 18_446_744_073_709_551_615.0),
        "int8" => (-128.0, 127.0),
        "int16" => (-32_768.0, 32_767.0),
        "int32" => (-2_147_483_648.0, 2_147_483_647.0),
        "int64" | "int" => (-9_223_372_036_854_775_808.0, 9_223_372_036_854_775_807.0),
        _ => return None,
    })
}

fn intersect(a: (f64, f64), b: (f64, f64)) -> (f64, f64) {
    (a.0.max(b.0), a.1.min(b.1))
}

fn range_text(r: (f64, f64)) -> String {
    let end = |x: f64| {
        if x.is_infinite() {
            "∞".to_owned()
        } else {
            format!("{x:.0}")
        }
    };
    format!("[{}, {}]", end(r.0), end(r.1))
}

fn join(s: &BTreeSet<&str>) -> String {
    s.iter().copied().collect::<Vec<_>>().join("|")
}
