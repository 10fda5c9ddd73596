//! Call variables: the string map every call carries, sent to Call Control webhooks and filled by
//! COLLECT blocks, BRIDGE and CALL_CONTROL. It owns the names of the always-present variables and
//! keeps blocks from overwriting them.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use uuid::Uuid;

/// The call's UUID (lower-case, hyphenated).
pub const CALL_UUID: &str = "call_uuid";
/// The correlation id shared by all legs and webhook requests of one call.
pub const CORRELATION_ID: &str = "correlation_id";
/// The caller's number (ANI).
pub const CALLER_ID_NUMBER: &str = "caller_id_number";
/// The called number (DNIS).
pub const DESTINATION_NUMBER: &str = "destination_number";
/// When the call arrived, RFC 3339 UTC with a `Z`, whole seconds (`2024-05-01T10:00:00Z`).
pub const CALL_START_TIME: &str = "call_start_time";
/// When the call was answered, as TENIOS (FreeSWITCH underneath) sends it: microseconds since
/// the Unix epoch as a decimal string, `"0"` until the call is answered.
pub const ANSWERED_TIME: &str = "answered_time";
/// Why the last BRIDGE block did not connect: `no_answer`, `busy` or `failed`.
pub const BRIDGE_RESULT: &str = "bridge_result";
/// What a COLLECT block stores under `variableName` is also stored under this prefix and the
/// name (`collected_pin` for `pin`): TENIOS apps read it there.
pub const COLLECTED_PREFIX: &str = "collected_";

/// The variables Callplane sets for every call; blocks and webhooks may read but not overwrite them.
pub const RESERVED: [&str; 6] = [
    CALL_UUID,
    CORRELATION_ID,
    CALLER_ID_NUMBER,
    DESTINATION_NUMBER,
    CALL_START_TIME,
    ANSWERED_TIME,
];

/// Whether `name` is one of the always-present variables in [`RESERVED`].
pub fn is_reserved(name: &str) -> bool {
    RESERVED.contains(&name)
}

/// Why [`CallVariables::set`] refused a name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VariableError {
    #[error("variable {0:?} is set by Callplane for every call and cannot be overwritten")]
    Reserved(String),
    #[error("a variable name must not be empty")]
    EmptyName,
}

/// The string map a call carries, ordered by name (so webhook bodies are stable).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(transparent)]
pub struct CallVariables(BTreeMap<String, String>);

impl CallVariables {
    /// A call's variables with the always-present ones filled in.
    pub fn new(
        call_uuid: Uuid,
        correlation_id: impl Into<String>,
        caller_id_number: impl Into<String>,
        destination_number: impl Into<String>,
        call_start_time: DateTime<Utc>,
    ) -> Self {
        let mut map = BTreeMap::new();
        map.insert(CALL_UUID.to_owned(), call_uuid.hyphenated().to_string());
        map.insert(CORRELATION_ID.to_owned(), correlation_id.into());
        map.insert(CALLER_ID_NUMBER.to_owned(), caller_id_number.into());
        map.insert(DESTINATION_NUMBER.to_owned(), destination_number.into());
        map.insert(
            CALL_START_TIME.to_owned(),
            call_start_time.to_rfc3339_opts(SecondsFormat::Secs, true),
        );
        map.insert(ANSWERED_TIME.to_owned(), "0".to_owned());
        CallVariables(map)
    }

    /// Records when the call was answered (`answered_time`).
    pub fn set_answered(&mut self, at: DateTime<Utc>) {
        self.0
            .insert(ANSWERED_TIME.to_owned(), at.timestamp_micros().to_string());
    }

    /// Stores what a COLLECT block collected under `name` and under `collected_<name>`.
    pub fn set_collected(&mut self, name: &str, value: &str) -> Result<(), VariableError> {
        self.set(name, value)?;
        self.set(format!("{COLLECTED_PREFIX}{name}"), value)
    }

    /// Sets (or replaces) a variable. Refuses the empty name and the [`RESERVED`] names.
    pub fn set(
        &mut self,
        name: impl Into<String>,
        value: impl Into<String>,
    ) -> Result<(), VariableError> {
        let name = name.into();
        if name.is_empty() {
            return Err(VariableError::EmptyName);
        }
        if is_reserved(&name) {
            return Err(VariableError::Reserved(name));
        }
        self.0.insert(name, value.into());
        Ok(())
    }

    /// The value of `name`, if set.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// All variables, ordered by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Number of variables.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none (only for a `default()` map; a call always has the reserved ones).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The underlying map.
    pub fn as_map(&self) -> &BTreeMap<String, String> {
        &self.0
    }

    /// [`expand`](Self::expand) for a SAY text; in SSML (`ssml`) the values are XML-escaped, so
    /// a variable cannot change the markup.
    pub fn expand_for(&self, text: &str, ssml: bool) -> String {
        if !ssml {
            return self.expand(text);
        }
        let mut escaped = self.clone();
        for v in escaped.0.values_mut() {
            *v = crate::tts::xml_escape(v);
        }
        escaped.expand(text)
    }

    /// Replaces `${name}` with the variable's value (empty when unset), for SAY texts.
    pub fn expand(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            match after.find('}') {
                Some(end) => {
                    out.push_str(self.get(&after[..end]).unwrap_or(""));
                    rest = &after[end + 1..];
                }
                None => {
                    out.push_str(&rest[start..]);
                    rest = "";
                }
            }
        }
        out.push_str(rest);
        out
    }

    /// The variables as a JSON object of strings, as the webhook's `variables` field.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Object(
            self.0
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect(),
        )
    }
}

#[cfg(test)]
mod expand_tests {
    use super::*;

    #[test]
    fn expands_known_unknown_and_unterminated() {
        let mut v = CallVariables::default();
        v.set("pin", "42").unwrap();
        assert_eq!(v.expand("You entered ${pin}."), "You entered 42.");
        assert_eq!(v.expand("${nope}x"), "x");
        assert_eq!(v.expand("a ${pin"), "a ${pin");
        assert_eq!(v.expand("no vars"), "no vars");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    fn sample() -> CallVariables {
        let start = Utc
            .with_ymd_and_hms(2024, 5, 1, 10, 0, 7)
            .single()
            .unwrap_or_default();
        let uuid = Uuid::parse_str("6F9619FF-8B86-D011-B42D-00C04FC964FF").unwrap_or_default();
        CallVariables::new(uuid, "corr-1", "+4922155400300", "+498912345", start)
    }

    #[test]
    fn new_fills_the_always_present_variables() {
        let v = sample();
        assert_eq!(
            v.get(CALL_UUID),
            Some("6f9619ff-8b86-d011-b42d-00c04fc964ff")
        );
        assert_eq!(v.get(CORRELATION_ID), Some("corr-1"));
        assert_eq!(v.get(CALLER_ID_NUMBER), Some("+4922155400300"));
        assert_eq!(v.get(DESTINATION_NUMBER), Some("+498912345"));
        assert_eq!(v.get(CALL_START_TIME), Some("2024-05-01T10:00:07Z"));
        assert_eq!(v.get(ANSWERED_TIME), Some("0"));
        assert_eq!(v.len(), 6);
        assert!(!v.is_empty());
    }

    #[test]
    fn call_start_time_is_utc_with_z_whatever_the_subsecond_part() {
        let start = Utc.timestamp_opt(1_700_000_000, 987_654_321).single();
        let v = CallVariables::new(Uuid::nil(), "c", "a", "b", start.unwrap_or_default());
        assert_eq!(v.get(CALL_START_TIME), Some("2023-11-14T22:13:20Z"));
    }

    #[test]
    fn set_get_and_iter_in_name_order() {
        let mut v = sample();
        assert_eq!(v.set("pin", "1234"), Ok(()));
        assert_eq!(v.set(BRIDGE_RESULT, "busy"), Ok(()));
        assert_eq!(v.set("pin", "9999"), Ok(()));
        assert_eq!(v.get("pin"), Some("9999"));
        assert_eq!(v.get("missing"), None);
        let names: Vec<&str> = v.iter().map(|(k, _)| k).collect();
        assert_eq!(
            names,
            [
                "answered_time",
                "bridge_result",
                "call_start_time",
                "call_uuid",
                "caller_id_number",
                "correlation_id",
                "destination_number",
                "pin"
            ]
        );
    }

    #[test]
    fn reserved_and_empty_names_are_refused() {
        let mut v = sample();
        for name in RESERVED {
            assert_eq!(
                v.set(name, "x"),
                Err(VariableError::Reserved(name.to_owned()))
            );
        }
        assert_eq!(v.set("", "x"), Err(VariableError::EmptyName));
        assert_eq!(v.get(CALLER_ID_NUMBER), Some("+4922155400300"));
        assert!(is_reserved("call_uuid"));
        assert!(!is_reserved("bridge_result"));
    }

    #[test]
    fn to_json_is_an_object_of_strings() {
        let mut v = sample();
        assert_eq!(v.set("pin", "0042"), Ok(()));
        assert_eq!(
            v.to_json(),
            json!({
                "call_uuid": "6f9619ff-8b86-d011-b42d-00c04fc964ff",
                "correlation_id": "corr-1",
                "caller_id_number": "+4922155400300",
                "destination_number": "+498912345",
                "call_start_time": "2024-05-01T10:00:07Z",
                "answered_time": "0",
                "pin": "0042"
            })
        );
        assert_eq!(serde_json::to_value(&v).ok(), Some(v.to_json()));
    }

    #[test]
    fn answered_time_is_epoch_microseconds_and_collected_values_are_stored_twice() {
        let mut v = sample();
        let at = Utc.timestamp_opt(1_700_000_000, 123_456_000).single();
        v.set_answered(at.unwrap_or_default());
        assert_eq!(v.get(ANSWERED_TIME), Some("1700000000123456"));
        assert_eq!(v.set_collected("pin", "42"), Ok(()));
        assert_eq!(
            (v.get("pin"), v.get("collected_pin")),
            (Some("42"), Some("42"))
        );
        assert!(v.set_collected(CALL_UUID, "x").is_err());
    }
}
