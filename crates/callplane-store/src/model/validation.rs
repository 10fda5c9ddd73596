//! Validation of the provisioned objects' own fields and of the references inside a whole
//! [`Provisioning`] set. The config file loader and the REST API share this code, so errors
//! name the object and the camelCase field exactly as the user wrote them.

use std::collections::HashMap;
use std::net::IpAddr;

use super::{
    Announcement, ApiKey, FieldError, Number, Provisioning, RoutingPlan, SipUser, Tenant, Trunk,
    SCOPE_FIELDS,
};

/// Collects errors for one object.
struct Errors<'a> {
    object: &'a str,
    list: Vec<FieldError>,
}

impl<'a> Errors<'a> {
    fn new(object: &'a str) -> Self {
        Errors {
            object,
            list: Vec::new(),
        }
    }

    fn push(&mut self, field: &str, message: impl Into<String>) {
        self.list.push(FieldError {
            object: self.object.to_string(),
            field: field.to_string(),
            message: message.into(),
        });
    }

    fn name(&mut self, field: &str, value: &str) {
        if value.trim().is_empty() {
            self.push(field, "must not be empty");
        } else if value.trim() != value {
            // Almost always a copy-paste slip, and it makes lookups by name silently miss.
            self.push(field, "must not start or end with whitespace");
        } else if value.chars().any(char::is_control) {
            self.push(field, "must not contain control characters");
        }
    }

    fn opt_name(&mut self, field: &str, value: &Option<String>) {
        if let Some(v) = value {
            self.name(field, v);
        }
    }

    fn url(&mut self, field: &str, value: &Option<String>) {
        if let Some(v) = value {
            if !is_http_url(v) {
                self.push(field, "must start with http:// or https://");
            }
        }
    }

    fn number(&mut self, field: &str, value: &str) {
        if !is_valid_number(value) {
            self.push(
                field,
                "must be an E.164 number or short code: optional '+', then 1 to 32 of 0-9 * #",
            );
        }
    }
}

/// What a name field accepts (`Errors::name`), as a JSON Schema pattern: not empty, no
/// leading or trailing whitespace, no control characters (C0, DEL, C1).
pub const NAME_PATTERN: &str =
    r"^[^\s\x00-\x1f\x7f-\x9f]([^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f])?$";
/// [`is_valid_number`] as a pattern.
pub const NUMBER_PATTERN: &str = r"^\+?[0-9*#]{1,32}$";
/// [`is_valid_username`] as a pattern.
pub const USERNAME_PATTERN: &str = "^[A-Za-z0-9._-]{1,64}$";
/// [`is_http_url`] as a pattern.
pub const URL_PATTERN: &str = r"^[hH][tT][tT][pP][sS]?://\S+$";
/// A trunk's host: a host name or IP address (no whitespace, control characters, `/`, `@`).
pub const HOST_PATTERN: &str = r"^[^\s\x00-\x1f\x7f-\x9f/@]+$";
/// A display name: no control characters.
pub const DISPLAY_NAME_PATTERN: &str = r"^[^\x00-\x1f\x7f-\x9f]*$";

/// `^\+?[0-9*#]{1,32}$`: E.164 numbers (`+4922155400300`) and short codes (`100`, `*97`).
pub fn is_valid_number(s: &str) -> bool {
    let digits = s.strip_prefix('+').unwrap_or(s);
    (1..=32).contains(&digits.len())
        && digits
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b'*' || b == b'#')
}

/// `^[A-Za-z0-9._-]{1,64}$`: safe in a SIP URI user part without escaping.
pub fn is_valid_username(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// An `http://` or `https://` URL with something after the scheme.
pub fn is_http_url(s: &str) -> bool {
    let lower = s.to_ascii_lowercase();
    let rest = lower
        .strip_prefix("https://")
        .or_else(|| lower.strip_prefix("http://"));
    matches!(rest, Some(r) if !r.is_empty() && !r.chars().any(char::is_whitespace))
}

/// The canonical text of an IP address, so that `::ffff:10.0.0.1` and `10.0.0.1` match the
/// same trunk (dual-stack sockets report IPv4 peers in the mapped form). `None` if not an IP.
pub fn canonical_ip(s: &str) -> Option<String> {
    let ip: IpAddr = s.trim().parse().ok()?;
    let ip = match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    };
    Some(ip.to_string())
}

fn label(kind: &str, key: &str) -> String {
    if key.is_empty() {
        format!("{kind} (unnamed)")
    } else {
        format!("{kind} {key}")
    }
}

/// A provisioned object's own field checks, named the way errors name the object.
pub trait Validate {
    /// How this object is named in errors outside a provisioning set: `tenant acme`.
    fn label(&self) -> String;

    /// Checks this object's own fields, naming the object `object` in the errors
    /// (`numbers[2]` inside a provisioning set).
    fn validate_as(&self, object: &str) -> Vec<FieldError>;

    /// Checks this object's own fields, named by its label.
    fn validate(&self) -> Vec<FieldError> {
        self.validate_as(&self.label())
    }
}

impl Validate for Tenant {
    /// How this object is named in errors outside a provisioning set: `tenant acme`.
    fn label(&self) -> String {
        label("tenant", &self.name)
    }

    fn validate_as(&self, object: &str) -> Vec<FieldError> {
        let mut e = Errors::new(object);
        e.name("name", &self.name);
        if self.customer_number <= 0 {
            e.push("customerNumber", "must be greater than 0");
        }
        if matches!(&self.signing_secret, Some(s) if s.is_empty()) {
            e.push("signingSecret", "must not be empty when set");
        }
        e.opt_name("defaultTrunk", &self.default_trunk);
        e.url("callstateInfoUrl", &self.callstate_info_url);
        e.opt_name("reseller", &self.reseller);
        e.list
    }
}

impl Validate for Number {
    /// `number +4922155400300`.
    fn label(&self) -> String {
        label("number", &self.number)
    }

    fn validate_as(&self, object: &str) -> Vec<FieldError> {
        let mut e = Errors::new(object);
        e.number("number", &self.number);
        e.name("tenant", &self.tenant);
        e.name("routingPlan", &self.routing_plan);
        e.url("callstateInfoUrl", &self.callstate_info_url);
        e.list
    }
}

impl Validate for SipUser {
    /// `sip user alice`.
    fn label(&self) -> String {
        label("sip user", &self.username)
    }

    fn validate_as(&self, object: &str) -> Vec<FieldError> {
        let mut e = Errors::new(object);
        e.name("tenant", &self.tenant);
        if !is_valid_username(&self.username) {
            e.push("username", "must be 1 to 64 of A-Z a-z 0-9 . _ -");
        }
        if matches!(&self.password, Some(p) if p.is_empty()) {
            e.push("password", "must not be empty");
        }
        // The display name ends up in From headers; a CR/LF there would inject header lines.
        if matches!(&self.display_name, Some(d) if d.chars().any(char::is_control)) {
            e.push("displayName", "must not contain control characters");
        }
        e.list
    }
}

impl Validate for Trunk {
    /// `trunk acme/carrier`.
    fn label(&self) -> String {
        label("trunk", &format!("{}/{}", self.tenant, self.name))
    }

    fn validate_as(&self, object: &str) -> Vec<FieldError> {
        let mut e = Errors::new(object);
        e.name("tenant", &self.tenant);
        e.name("name", &self.name);
        if self.host.is_empty() {
            e.push("host", "must not be empty");
        } else if self
            .host
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '/' || c == '@')
        {
            e.push("host", "must be a host name or IP address");
        }
        if self.port == 0 {
            e.push("port", "must be between 1 and 65535");
        }
        e.opt_name("username", &self.username);
        if let Some(c) = &self.caller_id {
            e.number("callerId", c);
        }
        for (i, addr) in self.inbound_addresses.iter().enumerate() {
            if canonical_ip(addr).is_none() {
                e.push(&format!("inboundAddresses[{i}]"), "must be an IP address");
            }
        }
        e.list
    }
}

impl Validate for RoutingPlan {
    /// `routing plan acme/main`.
    fn label(&self) -> String {
        label("routing plan", &format!("{}/{}", self.tenant, self.name))
    }

    fn validate_as(&self, object: &str) -> Vec<FieldError> {
        let mut e = Errors::new(object);
        e.name("tenant", &self.tenant);
        e.name("name", &self.name);
        e.url("callstateInfoUrl", &self.callstate_info_url);
        e.list
    }
}

impl Validate for Announcement {
    /// `announcement acme/welcome`.
    fn label(&self) -> String {
        label("announcement", &format!("{}/{}", self.tenant, self.name))
    }

    fn validate_as(&self, object: &str) -> Vec<FieldError> {
        let mut e = Errors::new(object);
        e.name("tenant", &self.tenant);
        e.name("name", &self.name);
        if self.file.trim().is_empty() {
            e.push("file", "must not be empty");
        }
        e.list
    }
}

/// The highest per-key request rate that may be set (requests per second).
pub const MAX_RATE_LIMIT: u32 = 100_000;

impl ApiKey {
    /// One of the [`SCOPE_FIELDS`] by its JSON name.
    fn scope_field(&self, field: &str) -> &Option<String> {
        match field {
            "reseller" => &self.reseller,
            "sipUser" => &self.sip_user,
            _ => &self.tenant,
        }
    }
}

impl Validate for ApiKey {
    /// `api key ops`.
    fn label(&self) -> String {
        label("api key", &self.name)
    }

    /// The name, and exactly the scope fields the realm uses: `reseller` for a reseller key,
    /// `tenant` for a customer key, `sipUser` for an account key (whose `tenant` may be given
    /// too; it is the SIP user's). Whether they exist is checked against the database.
    fn validate_as(&self, object: &str) -> Vec<FieldError> {
        let mut e = Errors::new(object);
        e.name("name", &self.name);
        e.opt_name("tenant", &self.tenant);
        e.opt_name("reseller", &self.reseller);
        e.opt_name("sipUser", &self.sip_user);
        if self.rate_limit.is_some_and(|r| r > MAX_RATE_LIMIT) {
            e.push(
                "rateLimit",
                format!("must be 0 (no limit) to {MAX_RATE_LIMIT} requests per second"),
            );
        }
        let realm = self.realm;
        let required = |e: &mut Errors, field: &str, value: &Option<String>| {
            if value.is_none() {
                e.push(field, format!("is required for realm {realm}"));
            }
        };
        let forbidden = |e: &mut Errors, field: &str, value: &Option<String>| {
            if value.is_some() {
                e.push(field, format!("must not be set for realm {realm}"));
            }
        };
        let scope = realm.scope();
        if let Some(field) = scope.required {
            required(&mut e, field, self.scope_field(field));
        }
        for field in SCOPE_FIELDS {
            if scope.required != Some(field) && scope.optional != Some(field) {
                forbidden(&mut e, field, self.scope_field(field));
            }
        }
        e.list
    }
}

/// Remembers the first index of each key and reports later repeats.
struct Seen<K> {
    first: HashMap<K, usize>,
}

impl<K: std::hash::Hash + Eq> Seen<K> {
    fn new() -> Self {
        Seen {
            first: HashMap::new(),
        }
    }

    /// `Some(first index)` if `key` was seen before.
    fn check(&mut self, key: K, index: usize) -> Option<usize> {
        match self.first.get(&key) {
            Some(&first) => Some(first),
            None => {
                self.first.insert(key, index);
                None
            }
        }
    }
}

impl Provisioning {
    /// Every object's own fields, named by list and index (`numbers[2]`).
    pub fn validate_fields(&self) -> Vec<FieldError> {
        let mut out = Vec::new();
        for (i, t) in self.tenants.iter().enumerate() {
            out.extend(t.validate_as(&format!("tenants[{i}]")));
        }
        for (i, n) in self.numbers.iter().enumerate() {
            out.extend(n.validate_as(&format!("numbers[{i}]")));
        }
        for (i, u) in self.sip_users.iter().enumerate() {
            out.extend(u.validate_as(&format!("sipUsers[{i}]")));
        }
        for (i, t) in self.trunks.iter().enumerate() {
            out.extend(t.validate_as(&format!("trunks[{i}]")));
        }
        for (i, p) in self.routing_plans.iter().enumerate() {
            out.extend(p.validate_as(&format!("routingPlans[{i}]")));
        }
        for (i, a) in self.announcements.iter().enumerate() {
            out.extend(a.validate_as(&format!("announcements[{i}]")));
        }
        out
    }

    /// Field checks plus the references and duplicates within this set: owners exist, a
    /// number's plan exists for its tenant, a tenant's default trunk exists, natural keys and
    /// trunk inbound addresses are unique. Empty means the set can be applied as a whole.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut out = self.validate_fields();
        let mut push = |object: String, field: &str, message: String| {
            out.push(FieldError {
                object,
                field: field.to_string(),
                message,
            })
        };

        let tenants: HashMap<&str, usize> = self
            .tenants
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.as_str(), i))
            .collect();
        let has_tenant = |name: &str| tenants.contains_key(name);
        let trunks: HashMap<(&str, &str), usize> = self
            .trunks
            .iter()
            .enumerate()
            .map(|(i, t)| ((t.tenant.as_str(), t.name.as_str()), i))
            .collect();
        let plans: HashMap<(&str, &str), usize> = self
            .routing_plans
            .iter()
            .enumerate()
            .map(|(i, p)| ((p.tenant.as_str(), p.name.as_str()), i))
            .collect();
        let missing_tenant = |t: &str| format!("tenant \"{t}\" is not defined in tenants");

        let mut names = Seen::new();
        let mut customer_numbers = Seen::new();
        for (i, t) in self.tenants.iter().enumerate() {
            let object = format!("tenants[{i}]");
            if let Some(first) = names.check(t.name.as_str(), i) {
                push(
                    object.clone(),
                    "name",
                    format!("duplicate of tenants[{first}]"),
                );
            }
            // Webhooks identify the tenant by this number alone, so it must be unambiguous.
            if let Some(first) = customer_numbers.check(t.customer_number, i) {
                push(
                    object.clone(),
                    "customerNumber",
                    format!("same customerNumber as tenants[{first}]"),
                );
            }
            if let Some(trunk) = &t.default_trunk {
                if !trunks.contains_key(&(t.name.as_str(), trunk.as_str())) {
                    push(
                        object,
                        "defaultTrunk",
                        format!("trunk \"{trunk}\" is not defined for tenant \"{}\"", t.name),
                    );
                }
            }
        }

        let mut seen = Seen::new();
        for (i, n) in self.numbers.iter().enumerate() {
            let object = format!("numbers[{i}]");
            if let Some(first) = seen.check(n.number.as_str(), i) {
                push(
                    object.clone(),
                    "number",
                    format!("duplicate of numbers[{first}]"),
                );
            }
            if n.tenant.is_empty() {
                continue;
            }
            if !has_tenant(&n.tenant) {
                push(object, "tenant", missing_tenant(&n.tenant));
            } else if !n.routing_plan.is_empty()
                && !plans.contains_key(&(n.tenant.as_str(), n.routing_plan.as_str()))
            {
                push(
                    object,
                    "routingPlan",
                    format!(
                        "routing plan \"{}\" is not defined for tenant \"{}\"",
                        n.routing_plan, n.tenant
                    ),
                );
            }
        }

        let mut seen = Seen::new();
        for (i, u) in self.sip_users.iter().enumerate() {
            let object = format!("sipUsers[{i}]");
            if let Some(first) = seen.check(u.username.as_str(), i) {
                push(
                    object.clone(),
                    "username",
                    format!("duplicate of sipUsers[{first}]"),
                );
            }
            if !u.tenant.is_empty() && !has_tenant(&u.tenant) {
                push(object, "tenant", missing_tenant(&u.tenant));
            }
        }

        let mut seen = Seen::new();
        let mut addresses: HashMap<String, usize> = HashMap::new();
        for (i, t) in self.trunks.iter().enumerate() {
            let object = format!("trunks[{i}]");
            if let Some(first) = seen.check((t.tenant.as_str(), t.name.as_str()), i) {
                push(
                    object.clone(),
                    "name",
                    format!("duplicate of trunks[{first}] (same tenant and name)"),
                );
            }
            if !t.tenant.is_empty() && !has_tenant(&t.tenant) {
                push(object.clone(), "tenant", missing_tenant(&t.tenant));
            }
            // An inbound INVITE must map to exactly one trunk (and so one tenant).
            for (j, addr) in t.inbound_addresses.iter().enumerate() {
                let Some(ip) = canonical_ip(addr) else {
                    continue;
                };
                match addresses.get(&ip) {
                    Some(&other) if other != i => push(
                        object.clone(),
                        &format!("inboundAddresses[{j}]"),
                        format!("address {ip} is already used by trunks[{other}]"),
                    ),
                    Some(_) => {}
                    None => {
                        addresses.insert(ip, i);
                    }
                }
            }
        }

        let mut seen = Seen::new();
        for (i, p) in self.routing_plans.iter().enumerate() {
            let object = format!("routingPlans[{i}]");
            if let Some(first) = seen.check((p.tenant.as_str(), p.name.as_str()), i) {
                push(
                    object.clone(),
                    "name",
                    format!("duplicate of routingPlans[{first}] (same tenant and name)"),
                );
            }
            if !p.tenant.is_empty() && !has_tenant(&p.tenant) {
                push(object, "tenant", missing_tenant(&p.tenant));
            }
        }

        let mut seen = Seen::new();
        for (i, a) in self.announcements.iter().enumerate() {
            let object = format!("announcements[{i}]");
            if let Some(first) = seen.check((a.tenant.as_str(), a.name.as_str()), i) {
                push(
                    object.clone(),
                    "name",
                    format!("duplicate of announcements[{first}] (same tenant and name)"),
                );
            }
            if !a.tenant.is_empty() && !has_tenant(&a.tenant) {
                push(object, "tenant", missing_tenant(&a.tenant));
            }
        }

        out
    }
}
