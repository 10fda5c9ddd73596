//! Validation shared by the REST API and the config file: the block list of a routing plan
//! (the engine's parser, errors mapped to `blocks[i].field`), and one object's references
//! checked against the database (the file checks them within itself instead).

use callplane_store::model::Validate;
use callplane_store::{FieldError, Number, RoutingPlan, Store, StoreError, Tenant, Trunk};
use serde_json::Value;

/// The errors of a routing plan's blocks, as `FieldError`s of `object` with the field
/// `blocks[{index}].{field}` (`blocks[{index}]` when the block as a whole is wrong, `blocks`
/// when the list is). The config file and the API report blocks through this one function.
pub fn block_errors(object: &str, blocks: &[Value]) -> Vec<FieldError> {
    let list = Value::Array(blocks.to_vec());
    let Err(errors) = callplane_engine::blocks::parse_blocks(&list) else {
        return Vec::new();
    };
    errors
        .into_iter()
        .map(|e| {
            let field = match e.field.as_str() {
                "blocks" => "blocks".to_string(),
                "" => format!("blocks[{}]", e.index),
                f => format!("blocks[{}].{f}", e.index),
            };
            FieldError {
                object: object.to_string(),
                field,
                message: e.to_string(),
            }
        })
        .collect()
}

fn push(out: &mut Vec<FieldError>, object: &str, field: &str, message: String) {
    out.push(FieldError {
        object: object.to_string(),
        field: field.to_string(),
        message,
    });
}

/// A tenant's fields and its `defaultTrunk` (which must be a stored trunk of the tenant).
pub fn check_tenant(store: &Store, t: &Tenant) -> Result<Vec<FieldError>, StoreError> {
    let object = t.label();
    let mut out = t.validate_as(&object);
    if let Some(trunk) = &t.default_trunk {
        if out.iter().all(|e| e.field != "defaultTrunk")
            && store.get_trunk(&t.name, trunk)?.is_none()
        {
            push(
                &mut out,
                &object,
                "defaultTrunk",
                format!("trunk \"{trunk}\" is not defined for tenant \"{}\"", t.name),
            );
        }
    }
    Ok(out)
}

/// A number's fields and its `routingPlan` (a stored plan of the same tenant).
pub fn check_number(store: &Store, n: &Number) -> Result<Vec<FieldError>, StoreError> {
    let object = n.label();
    let mut out = n.validate_as(&object);
    if out.iter().all(|e| e.field != "routingPlan")
        && store
            .get_routing_plan(&n.tenant, &n.routing_plan)?
            .is_none()
    {
        push(
            &mut out,
            &object,
            "routingPlan",
            format!(
                "routing plan \"{}\" is not defined for tenant \"{}\"",
                n.routing_plan, n.tenant
            ),
        );
    }
    Ok(out)
}

/// A trunk's fields, and its inbound addresses not used by another trunk (an inbound INVITE
/// must map to exactly one trunk).
pub fn check_trunk(store: &Store, t: &Trunk) -> Result<Vec<FieldError>, StoreError> {
    let object = t.label();
    let mut out = t.validate_as(&object);
    for (j, addr) in t.inbound_addresses.iter().enumerate() {
        if let Some(other) = store.find_trunk_by_source_ip(addr)? {
            if (other.tenant.as_str(), other.name.as_str()) != (t.tenant.as_str(), t.name.as_str())
            {
                push(
                    &mut out,
                    &object,
                    &format!("inboundAddresses[{j}]"),
                    format!("address {addr} is already used by another trunk"),
                );
            }
        }
    }
    Ok(out)
}

/// A routing plan's fields and blocks.
pub fn check_routing_plan(p: &RoutingPlan) -> Vec<FieldError> {
    let object = p.label();
    let mut out = p.validate_as(&object);
    out.extend(block_errors(&object, &p.blocks));
    out
}
