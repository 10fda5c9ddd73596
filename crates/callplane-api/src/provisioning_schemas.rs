//! The schemas of the provisioned objects (`Tenant`, `Number`, `SipUser`, `Trunk`,
//! `RoutingPlan`) and of their create and replace bodies, generated from the store's model
//! types — the types the handlers decode bodies into and answer from
//! ([`crate::resources`]). What the API does around the type is applied here, from one table:
//! the URL's `tenant` (and on a replace the URL's key) may be left out of a body, the
//! write-only secret is answered as a read-only `…Set` flag, and a field the type lets out
//! may be required on create.

use serde_json::{json, Map, Value};

/// How a provisioned object's API shapes differ from its model type.
struct Provisioned {
    /// Its schema's name (the create and replace bodies' names start with it).
    name: &'static str,
    /// The key field, which the URL names on a replace.
    key: &'static str,
    /// Nested under `/v1/tenants/{tenant}`: its `tenant` is the URL's.
    nested: bool,
    /// The write-only secret, the read-only flag answered instead, and what the flag says.
    secret: Option<(&'static str, &'static str, &'static str)>,
    /// Fields the type lets out that a create must give.
    create_requires: &'static [&'static str],
}

const PROVISIONED: [Provisioned; 5] = [
    Provisioned {
        name: "Tenant",
        key: "name",
        nested: false,
        secret: Some((
            "signingSecret",
            "signingSecretSet",
            "Whether a signing secret is stored.",
        )),
        create_requires: &[],
    },
    Provisioned {
        name: "Number",
        key: "number",
        nested: true,
        secret: None,
        create_requires: &[],
    },
    Provisioned {
        name: "SipUser",
        key: "username",
        nested: true,
        secret: Some(("password", "passwordSet", "Whether a password is stored.")),
        create_requires: &["password"],
    },
    Provisioned {
        name: "Trunk",
        key: "name",
        nested: true,
        secret: Some(("password", "passwordSet", "Whether a password is stored.")),
        create_requires: &[],
    },
    Provisioned {
        name: "RoutingPlan",
        key: "name",
        nested: true,
        secret: None,
        create_requires: &[],
    },
];

fn add_all(g: &mut schemars::SchemaGenerator) -> Map<String, Value> {
    use callplane_store::model::{Number, RoutingPlan, SipUser, Tenant, Trunk};
    g.subschema_for::<Tenant>();
    g.subschema_for::<Number>();
    g.subschema_for::<SipUser>();
    g.subschema_for::<Trunk>();
    g.subschema_for::<RoutingPlan>();
    g.take_definitions(true)
}

fn required(schema: &mut Value) -> &mut Vec<Value> {
    if !schema["required"].is_array() {
        schema["required"] = json!([]);
    }
    match schema.get_mut("required") {
        Some(Value::Array(r)) => r,
        _ => unreachable!("set above"),
    }
}

fn not_required(schema: &mut Value, field: &str) {
    required(schema).retain(|r| r != field);
}

fn require(schema: &mut Value, field: &str) {
    let r = required(schema);
    if !r.iter().any(|x| x == field) {
        r.push(Value::from(field));
    }
}

/// A property that may be `null` too (read as left out).
fn nullable(schema: &mut Value, field: &str, description: &str) {
    let prop = &mut schema["properties"][field];
    match prop["type"].clone() {
        Value::String(t) => prop["type"] = json!([t, "null"]),
        Value::Array(mut ts) if !ts.iter().any(|t| t == "null") => {
            ts.push(Value::from("null"));
            prop["type"] = Value::Array(ts);
        }
        _ => {}
    }
    prop["description"] = Value::from(description);
}

/// The answer: the secret is never in it (so not required), its flag always is.
fn answer(p: &Provisioned, mut schema: Value) -> Value {
    if let Some((secret, flag, says)) = p.secret {
        not_required(&mut schema, secret);
        schema["properties"][flag] = json!({
            "type": "boolean",
            "readOnly": true,
            "description": says,
        });
        require(&mut schema, flag);
    }
    schema
}

/// The create body: the URL's tenant may be left out, the flag is ignored on input.
fn create(p: &Provisioned, mut schema: Value) -> Value {
    if p.nested {
        nullable(
            &mut schema,
            "tenant",
            "Optional on input: the URL's tenant; if given it must be that one.",
        );
        not_required(&mut schema, "tenant");
    }
    if let Some((_, flag, _)) = p.secret {
        schema["properties"][flag] = json!({
            "description": "Output only; ignored on input (any value)."
        });
    }
    for f in p.create_requires {
        require(&mut schema, f);
    }
    schema
}

/// The replace body: a create whose key the URL names, and that may leave out what a create
/// must give (kept as stored).
fn replace(p: &Provisioned, mut schema: Value) -> Value {
    nullable(
        &mut schema,
        p.key,
        "Left out or null: the URL's. If given, it must be the URL's.",
    );
    not_required(&mut schema, p.key);
    for f in p.create_requires {
        not_required(&mut schema, f);
    }
    schema["description"] = Value::from(
        "The key field may be left out (the URL names it); if given it must be the URL's.",
    );
    schema
}

/// The provisioned objects' answer, create and replace schemas (and the types they use), by
/// their names in the document.
pub fn schemas() -> Map<String, Value> {
    let mut out = add_all(&mut crate::schema_generator(true));
    let read = add_all(&mut crate::schema_generator(false));
    for p in &PROVISIONED {
        if let Some(s) = out.remove(p.name) {
            out.insert(p.name.to_string(), answer(p, s));
        }
        if let Some(s) = read.get(p.name) {
            let created = create(p, s.clone());
            out.insert(format!("{}Replace", p.name), replace(p, created.clone()));
            out.insert(format!("{}Create", p.name), created);
        }
    }
    // Types the objects use (Transport) are the same either way.
    for (name, s) in read {
        out.entry(name).or_insert(s);
    }
    out
}
