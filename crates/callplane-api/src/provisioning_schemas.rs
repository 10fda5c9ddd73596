//! The schemas of the provisioned objects (`Tenant`, `Number`, `SipUser`, `Trunk`,
//! `RoutingPlan`) and of their create and replace bodies, generated from the store's model
//! types — the types the handlers decode bodies into and answer from
//! ([`crate::resources`]). What the API does around the type is applied here, from one table:
//! the URL's `tenant` (and on a replace the URL's key) may be left out of a body, the
//! write-only secret is answered as a read-only `…Set` flag, and a field the type lets out
//! may be required on create. API keys' create body (`ApiKeyCreate`) is generated the same
//! way, one alternative per realm from the rule keys are validated by.

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

/// `ApiKeyCreate`: the `ApiKey` type as the handler decodes it, one alternative per realm
/// with exactly the scope fields that realm uses ([`ApiRealm::scope`], the rule `Validate for
/// ApiKey` checks). Without the alternatives the schema would admit keys the server refuses.
fn api_key_create() -> Value {
    use callplane_store::model::{ApiKey, ApiRealm, SCOPE_FIELDS};
    let mut g = crate::schema_generator(false);
    g.subschema_for::<ApiKey>();
    let base = g
        .take_definitions(true)
        .remove("ApiKey")
        .unwrap_or_default();
    let mut one_of = Vec::new();
    for realm in ApiRealm::ALL.iter().rev() {
        let mut s = base.clone();
        if let Some(o) = s.as_object_mut() {
            o.remove("description");
        }
        s["properties"]["realm"] = json!({"type": "string", "const": realm.as_str()});
        s["properties"]["created"] = json!({"description": "Output only; ignored on input."});
        let scope = realm.scope();
        for field in SCOPE_FIELDS {
            let prop = &mut s["properties"][field];
            if scope.required == Some(field) {
                prop["type"] = json!("string");
                require(&mut s, field);
            } else if scope.optional != Some(field) {
                *prop = json!({
                    "type": "null",
                    "description": format!("Not used by realm {realm}: left out or null."),
                });
            }
        }
        one_of.push(s);
    }
    json!({
        "description": "A new key: exactly the scope fields its realm uses. Keys create keys of their own realm or below, inside their own scope.",
        "oneOf": one_of,
    })
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
    out.insert("ApiKeyCreate".into(), api_key_create());
    // Types the objects use (Transport) are the same either way.
    for (name, s) in read {
        out.entry(name).or_insert(s);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use callplane_store::model::{ApiRealm, SCOPE_FIELDS};

    #[test]
    fn api_key_create_has_one_closed_alternative_per_realm_with_its_scope_fields() {
        let s = api_key_create();
        let alternatives = s["oneOf"].as_array().expect("oneOf");
        assert_eq!(alternatives.len(), ApiRealm::ALL.len());
        for realm in ApiRealm::ALL {
            let alt = alternatives
                .iter()
                .find(|a| a["properties"]["realm"]["const"] == realm.as_str())
                .unwrap_or_else(|| panic!("an alternative for {realm}"));
            assert_eq!(alt["additionalProperties"], json!(false), "{realm}: closed");
            let required: Vec<&str> = alt["required"]
                .as_array()
                .expect("required")
                .iter()
                .filter_map(Value::as_str)
                .collect();
            assert!(required.contains(&"name") && required.contains(&"realm"));
            let scope = realm.scope();
            for field in SCOPE_FIELDS {
                let prop = &alt["properties"][field];
                if scope.required == Some(field) {
                    assert!(required.contains(&field), "{realm}: {field} required");
                    assert_eq!(prop["type"], "string", "{realm}: {field}");
                } else if scope.optional == Some(field) {
                    assert!(!required.contains(&field), "{realm}: {field} optional");
                    assert_eq!(prop["type"], json!(["string", "null"]), "{realm}: {field}");
                } else {
                    assert!(!required.contains(&field), "{realm}: {field} not used");
                    assert_eq!(prop["type"], "null", "{realm}: {field} not used");
                }
            }
            assert!(alt["properties"]["rateLimit"].is_object());
        }
    }
}
