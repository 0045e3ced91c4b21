//! The structure the graph schema requires, checked on the parsed document before it is read
//! into typed values, so that every structural problem is reported at once with its path
//! (serde stops at the first). Mirrors `aio-wasm-graph-config-1.0.0.json` (GA) and the preview
//! `ConfigGraph` schema; `tests/graphs.rs` checks the golden graphs against the official schema.

use serde_json::Value;

use super::GraphProblem;

pub(super) enum Kind {
    Str,
    NullableStr,
    Bool,
    Enum(&'static [&'static str]),
    NullableArm,
    Object(&'static Object),
    ArrayOf(&'static Kind),
    NullableArrayOf(&'static Kind),
    MapOf(&'static Kind),
}

pub(super) struct Object {
    fields: &'static [Field],
    /// `additionalProperties: false`.
    closed: bool,
}

struct Field {
    name: &'static str,
    kind: Kind,
    required: bool,
}

const fn req(name: &'static str, kind: Kind) -> Field {
    Field {
        name,
        kind,
        required: true,
    }
}

const fn opt(name: &'static str, kind: Kind) -> Field {
    Field {
        name,
        kind,
        required: false,
    }
}

const OPERATION_TYPES: &[&str] = &[
    "source",
    "map",
    "filter",
    "branch",
    "concatenate",
    "accumulate",
    "delay",
    "sink",
];

const METADATA: Object = Object {
    fields: &[
        req("$schema", Kind::Str),
        req("name", Kind::Str),
        req("version", Kind::Str),
        opt("description", Kind::NullableStr),
        opt("vendor", Kind::NullableStr),
    ],
    closed: true,
};
const FEATURE: Object = Object {
    fields: &[req("name", Kind::Str), opt("value", Kind::NullableStr)],
    closed: true,
};
const GA_REQUIREMENTS: Object = Object {
    fields: &[
        req("apiVersion", Kind::Str),
        req("runtimeVersion", Kind::Str),
        opt("features", Kind::NullableArrayOf(&Kind::Object(&FEATURE))),
    ],
    closed: true,
};
const PREVIEW_REQUIREMENTS: Object = Object {
    fields: &[
        req("apiVersion", Kind::Str),
        req("hostlibVersion", Kind::Str),
        opt("features", Kind::NullableArrayOf(&Kind::Object(&FEATURE))),
    ],
    closed: true,
};
const PARAMETER: Object = Object {
    fields: &[
        req("name", Kind::Str),
        opt("description", Kind::NullableStr),
        opt("required", Kind::Bool),
        opt("default", Kind::NullableStr),
    ],
    closed: false,
};
const MODULE_CONFIGURATION: Object = Object {
    fields: &[
        req("name", Kind::Str),
        req("parameters", Kind::MapOf(&Kind::Object(&PARAMETER))),
    ],
    closed: false,
};
const OPERATION: Object = Object {
    fields: &[
        req("name", Kind::Str),
        req("operationType", Kind::Enum(OPERATION_TYPES)),
        opt("module", Kind::NullableStr),
    ],
    closed: true,
};
const FROM: Object = Object {
    fields: &[
        req("name", Kind::Str),
        opt("arm", Kind::NullableArm),
        opt("schemaName", Kind::NullableStr),
    ],
    closed: true,
};
const TO: Object = Object {
    fields: &[req("name", Kind::Str)],
    closed: true,
};
const CONNECTION: Object = Object {
    fields: &[
        req("from", Kind::Object(&FROM)),
        req("to", Kind::Object(&TO)),
    ],
    closed: true,
};
const SCHEMA: Object = Object {
    fields: &[
        req("format", Kind::Str),
        req("name", Kind::Str),
        req("schema", Kind::Str),
    ],
    closed: false,
};

pub(super) const GA: Object = Object {
    fields: &[
        req("metadata", Kind::Object(&METADATA)),
        req("moduleRequirements", Kind::Object(&GA_REQUIREMENTS)),
        opt(
            "moduleConfigurations",
            Kind::ArrayOf(&Kind::Object(&MODULE_CONFIGURATION)),
        ),
        req("operations", Kind::ArrayOf(&Kind::Object(&OPERATION))),
        req("connections", Kind::ArrayOf(&Kind::Object(&CONNECTION))),
        opt("schemas", Kind::ArrayOf(&Kind::Object(&SCHEMA))),
    ],
    closed: true,
};

pub(super) const PREVIEW: Object = Object {
    fields: &[
        opt("metadata", Kind::Object(&METADATA)),
        req("moduleRequirements", Kind::Object(&PREVIEW_REQUIREMENTS)),
        opt(
            "moduleConfigurations",
            Kind::ArrayOf(&Kind::Object(&MODULE_CONFIGURATION)),
        ),
        req("operations", Kind::ArrayOf(&Kind::Object(&OPERATION))),
        req("connections", Kind::ArrayOf(&Kind::Object(&CONNECTION))),
        opt("schemas", Kind::ArrayOf(&Kind::Object(&SCHEMA))),
    ],
    closed: true,
};

fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

fn child(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

fn problem(errors: &mut Vec<GraphProblem>, path: &str, message: String) {
    errors.push(GraphProblem {
        path: if path.is_empty() {
            "(root)".to_owned()
        } else {
            path.to_owned()
        },
        message,
    });
}

/// Checks `value` against `object`, adding every problem found to `errors`.
pub(super) fn check_object(
    value: &Value,
    object: &Object,
    path: &str,
    errors: &mut Vec<GraphProblem>,
) {
    let Value::Object(map) = value else {
        problem(
            errors,
            path,
            format!("expected a mapping, found {}", describe(value)),
        );
        return;
    };
    for field in object.fields {
        match map.get(field.name) {
            Some(v) => check(v, &field.kind, &child(path, field.name), errors),
            None if field.required => problem(
                errors,
                path,
                format!("missing required field `{}`", field.name),
            ),
            None => {}
        }
    }
    if object.closed {
        for key in map.keys() {
            if !object.fields.iter().any(|f| f.name == key) {
                let expected: Vec<&str> = object.fields.iter().map(|f| f.name).collect();
                problem(
                    errors,
                    &child(path, key),
                    format!(
                        "unknown field `{key}`; expected one of: {}",
                        expected.join(", ")
                    ),
                );
            }
        }
    }
}

fn check(value: &Value, kind: &Kind, path: &str, errors: &mut Vec<GraphProblem>) {
    match (kind, value) {
        (Kind::Str, Value::String(_))
        | (Kind::NullableStr, Value::String(_) | Value::Null)
        | (Kind::Bool, Value::Bool(_))
        | (Kind::NullableArm, Value::Null)
        | (Kind::NullableArrayOf(_), Value::Null) => {}
        (Kind::Str, other) => problem(
            errors,
            path,
            format!("expected a string, found {}", describe(other)),
        ),
        (Kind::NullableStr, other) => {
            problem(
                errors,
                path,
                format!("expected a string or null, found {}", describe(other)),
            );
        }
        (Kind::Bool, other) => problem(
            errors,
            path,
            format!("expected a boolean, found {}", describe(other)),
        ),
        (Kind::Enum(allowed), Value::String(s)) if allowed.contains(&s.as_str()) => {}
        (Kind::Enum(allowed), other) => problem(
            errors,
            path,
            format!(
                "unsupported value {other}: supported values: {}",
                allowed.join(", ")
            ),
        ),
        (Kind::NullableArm, Value::String(s)) if s == "True" || s == "False" => {}
        (Kind::NullableArm, Value::Bool(b)) => problem(
            errors,
            path,
            format!(
                "unsupported value {b}: supported values: \"False\", \"True\" (write the arm as a quoted string: \"{}\")",
                if *b { "True" } else { "False" }
            ),
        ),
        (Kind::NullableArm, other) => {
            problem(
                errors,
                path,
                format!("unsupported value {other}: supported values: \"False\", \"True\""),
            );
        }
        (Kind::Object(object), v) => check_object(v, object, path, errors),
        (Kind::ArrayOf(item) | Kind::NullableArrayOf(item), Value::Array(values)) => {
            for (i, v) in values.iter().enumerate() {
                check(v, item, &format!("{path}[{i}]"), errors);
            }
        }
        (Kind::ArrayOf(_) | Kind::NullableArrayOf(_), other) => {
            problem(
                errors,
                path,
                format!("expected a list, found {}", describe(other)),
            );
        }
        (Kind::MapOf(item), Value::Object(map)) => {
            for (key, v) in map {
                check(v, item, &child(path, key), errors);
            }
        }
        (Kind::MapOf(_), other) => problem(
            errors,
            path,
            format!("expected a mapping, found {}", describe(other)),
        ),
    }
}
