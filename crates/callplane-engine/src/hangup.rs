//! Hangup causes: the Q.850 names a `HANGUP` block and the CDRs speak, and their translation to
//! and from SIP (the final response sent before answer, the `Reason` header of BYE/CANCEL, and the
//! cause derived from an outbound leg's final response, RFC 3398).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A hangup name that is not one of [`HangupCause::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown hangup cause {0:?}")]
pub struct UnknownHangupCause(pub String);

/// Declares the enum and its three tables (name, Q.850 value, SIP response before answer) from one
/// list so they cannot drift apart.
macro_rules! hangup_causes {
    ($( $(#[$doc:meta])* $variant:ident = $name:literal, q850 $q850:literal, sip $sip:literal; )+) => {
        /// Why a call or leg ended, by its Q.850 name (serialized as that name, e.g.
        /// `"NORMAL_CLEARING"`).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum HangupCause {
            $( $(#[$doc])* $variant, )+
        }

        impl HangupCause {
            /// Every cause, in Q.850 order.
            pub const ALL: &'static [HangupCause] = &[ $( HangupCause::$variant, )+ ];

            /// The Q.850 name, as it appears in `hangupCause` and in CDRs.
            pub fn as_str(self) -> &'static str {
                match self { $( HangupCause::$variant => $name, )+ }
            }

            /// The Q.850 cause value. `ORIGINATOR_CANCEL` has no Q.850 value and reports 487,
            /// FreeSWITCH's convention.
            pub fn q850_code(self) -> u16 {
                match self { $( HangupCause::$variant => $q850, )+ }
            }

            /// The SIP final response that ends a call with this cause before it is answered.
            pub fn sip_status(self) -> u16 {
                match self { $( HangupCause::$variant => $sip, )+ }
            }
        }

        impl FromStr for HangupCause {
            type Err = UnknownHangupCause;

            /// Parses the exact (upper-case) Q.850 name.
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $( $name => Ok(HangupCause::$variant), )+
                    _ => Err(UnknownHangupCause(s.to_owned())),
                }
            }
        }
    };
}

hangup_causes! {
    UnallocatedNumber = "UNALLOCATED_NUMBER", q850 1, sip 404;
    NoRouteTransitNet = "NO_ROUTE_TRANSIT_NET", q850 2, sip 404;
    NoRouteDestination = "NO_ROUTE_DESTINATION", q850 3, sip 404;
    /// The normal end of an answered call. It has no SIP response of its own in the spec's table;
    /// used before answer it is sent as 480 Temporarily Unavailable, like NORMAL_UNSPECIFIED (and
    /// like FreeSWITCH, which falls back to 480 for causes without a mapping).
    NormalClearing = "NORMAL_CLEARING", q850 16, sip 480;
    UserBusy = "USER_BUSY", q850 17, sip 486;
    NoUserResponse = "NO_USER_RESPONSE", q850 18, sip 408;
    NoAnswer = "NO_ANSWER", q850 19, sip 480;
    SubscriberAbsent = "SUBSCRIBER_ABSENT", q850 20, sip 480;
    CallRejected = "CALL_REJECTED", q850 21, sip 603;
    NumberChanged = "NUMBER_CHANGED", q850 22, sip 410;
    RedirectionToNewDestination = "REDIRECTION_TO_NEW_DESTINATION", q850 23, sip 410;
    ExchangeRoutingError = "EXCHANGE_ROUTING_ERROR", q850 25, sip 483;
    DestinationOutOfOrder = "DESTINATION_OUT_OF_ORDER", q850 27, sip 502;
    InvalidNumberFormat = "INVALID_NUMBER_FORMAT", q850 28, sip 484;
    FacilityRejected = "FACILITY_REJECTED", q850 29, sip 501;
    NormalUnspecified = "NORMAL_UNSPECIFIED", q850 31, sip 480;
    NormalCircuitCongestion = "NORMAL_CIRCUIT_CONGESTION", q850 34, sip 503;
    NetworkOutOfOrder = "NETWORK_OUT_OF_ORDER", q850 38, sip 503;
    NormalTemporaryFailure = "NORMAL_TEMPORARY_FAILURE", q850 41, sip 503;
    SwitchCongestion = "SWITCH_CONGESTION", q850 42, sip 503;
    RequestedChanUnavail = "REQUESTED_CHAN_UNAVAIL", q850 44, sip 503;
    OutgoingCallBarred = "OUTGOING_CALL_BARRED", q850 52, sip 403;
    IncomingCallBarred = "INCOMING_CALL_BARRED", q850 54, sip 403;
    BearercapabilityNotauth = "BEARERCAPABILITY_NOTAUTH", q850 57, sip 403;
    BearercapabilityNotavail = "BEARERCAPABILITY_NOTAVAIL", q850 58, sip 488;
    BearercapabilityNotimpl = "BEARERCAPABILITY_NOTIMPL", q850 65, sip 488;
    FacilityNotImplemented = "FACILITY_NOT_IMPLEMENTED", q850 69, sip 501;
    ServiceNotImplemented = "SERVICE_NOT_IMPLEMENTED", q850 79, sip 501;
    IncompatibleDestination = "INCOMPATIBLE_DESTINATION", q850 88, sip 488;
    RecoveryOnTimerExpire = "RECOVERY_ON_TIMER_EXPIRE", q850 102, sip 504;
    /// The caller gave up (CANCEL before answer). Not a Q.850 cause; see [`HangupCause::q850_code`].
    OriginatorCancel = "ORIGINATOR_CANCEL", q850 487, sip 487;
}

impl HangupCause {
    /// The cause for an outbound leg that ended with SIP final response `status`.
    ///
    /// Follows RFC 3398 §8.2.6.1 (as FreeSWITCH does), with these choices where RFC 3398 names a
    /// cause outside this vocabulary or none at all:
    /// - 2xx → NORMAL_CLEARING; 3xx (a redirect we did not follow) → REDIRECTION_TO_NEW_DESTINATION;
    /// - 405 (Q.850 63, service unavailable) → SERVICE_NOT_IMPLEMENTED;
    /// - 413/414/416/420/421/423/505/513 (Q.850 127, interworking) → NORMAL_UNSPECIFIED;
    /// - 487 → ORIGINATOR_CANCEL; 488/606 → INCOMPATIBLE_DESTINATION; 607/608 → CALL_REJECTED;
    /// - other codes of a class are read as its x00 code (RFC 3261 §21): 4xx and 5xx →
    ///   NORMAL_TEMPORARY_FAILURE, 6xx → USER_BUSY;
    /// - anything that is not a final response (1xx, out of range) → NORMAL_UNSPECIFIED.
    pub fn from_sip_status(status: u16) -> HangupCause {
        use HangupCause::*;
        match status {
            200..=299 => NormalClearing,
            300..=399 => RedirectionToNewDestination,
            401 | 402 | 403 | 407 => CallRejected,
            404 | 485 => UnallocatedNumber,
            405 | 406 | 415 => ServiceNotImplemented,
            408 => RecoveryOnTimerExpire,
            410 => NumberChanged,
            413 | 414 | 416 | 420 | 421 | 423 => NormalUnspecified,
            480 => NoUserResponse,
            482 | 483 => ExchangeRoutingError,
            484 => InvalidNumberFormat,
            486 => UserBusy,
            487 => OriginatorCancel,
            488 => IncompatibleDestination,
            // 400, 481 and unknown 4xx.
            400..=499 => NormalTemporaryFailure,
            501 => ServiceNotImplemented,
            502 => NetworkOutOfOrder,
            504 => RecoveryOnTimerExpire,
            505 | 513 => NormalUnspecified,
            // 500, 503 and unknown 5xx.
            500..=599 => NormalTemporaryFailure,
            603 | 607 | 608 => CallRejected,
            604 => UnallocatedNumber,
            606 => IncompatibleDestination,
            // 600 and unknown 6xx.
            600..=699 => UserBusy,
            _ => NormalUnspecified,
        }
    }

    /// The value of a `Reason` header (RFC 3326) for a BYE or CANCEL ending a call with this
    /// cause, e.g. `Q.850;cause=16;text="NORMAL_CLEARING"`.
    ///
    /// ORIGINATOR_CANCEL uses the `SIP` protocol (`SIP;cause=487;text="ORIGINATOR_CANCEL"`):
    /// 487 is a SIP status, and a Q.850 cause value must fit in 7 bits.
    pub fn reason_header(&self) -> String {
        let protocol = if *self == HangupCause::OriginatorCancel {
            "SIP"
        } else {
            "Q.850"
        };
        format!(
            "{protocol};cause={};text=\"{}\"",
            self.q850_code(),
            self.as_str()
        )
    }
}

impl fmt::Display for HangupCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for HangupCause {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for HangupCause {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The spec's table, copied verbatim: cause name and SIP response before answer.
    const SPEC_TABLE: &[(&str, u16)] = &[
        ("UNALLOCATED_NUMBER", 404),
        ("NO_ROUTE_TRANSIT_NET", 404),
        ("NO_ROUTE_DESTINATION", 404),
        ("USER_BUSY", 486),
        ("NO_USER_RESPONSE", 408),
        ("NO_ANSWER", 480),
        ("SUBSCRIBER_ABSENT", 480),
        ("CALL_REJECTED", 603),
        ("NUMBER_CHANGED", 410),
        ("REDIRECTION_TO_NEW_DESTINATION", 410),
        ("EXCHANGE_ROUTING_ERROR", 483),
        ("DESTINATION_OUT_OF_ORDER", 502),
        ("INVALID_NUMBER_FORMAT", 484),
        ("FACILITY_REJECTED", 501),
        ("NORMAL_UNSPECIFIED", 480),
        ("NORMAL_CIRCUIT_CONGESTION", 503),
        ("NETWORK_OUT_OF_ORDER", 503),
        ("NORMAL_TEMPORARY_FAILURE", 503),
        ("SWITCH_CONGESTION", 503),
        ("REQUESTED_CHAN_UNAVAIL", 503),
        ("OUTGOING_CALL_BARRED", 403),
        ("INCOMING_CALL_BARRED", 403),
        ("BEARERCAPABILITY_NOTAUTH", 403),
        ("BEARERCAPABILITY_NOTAVAIL", 488),
        ("BEARERCAPABILITY_NOTIMPL", 488),
        ("FACILITY_NOT_IMPLEMENTED", 501),
        ("SERVICE_NOT_IMPLEMENTED", 501),
        ("INCOMPATIBLE_DESTINATION", 488),
        ("RECOVERY_ON_TIMER_EXPIRE", 504),
        ("ORIGINATOR_CANCEL", 487),
    ];

    /// ITU-T Q.850 cause values (487 for ORIGINATOR_CANCEL by FreeSWITCH's convention).
    const Q850_TABLE: &[(&str, u16)] = &[
        ("UNALLOCATED_NUMBER", 1),
        ("NO_ROUTE_TRANSIT_NET", 2),
        ("NO_ROUTE_DESTINATION", 3),
        ("NORMAL_CLEARING", 16),
        ("USER_BUSY", 17),
        ("NO_USER_RESPONSE", 18),
        ("NO_ANSWER", 19),
        ("SUBSCRIBER_ABSENT", 20),
        ("CALL_REJECTED", 21),
        ("NUMBER_CHANGED", 22),
        ("REDIRECTION_TO_NEW_DESTINATION", 23),
        ("EXCHANGE_ROUTING_ERROR", 25),
        ("DESTINATION_OUT_OF_ORDER", 27),
        ("INVALID_NUMBER_FORMAT", 28),
        ("FACILITY_REJECTED", 29),
        ("NORMAL_UNSPECIFIED", 31),
        ("NORMAL_CIRCUIT_CONGESTION", 34),
        ("NETWORK_OUT_OF_ORDER", 38),
        ("NORMAL_TEMPORARY_FAILURE", 41),
        ("SWITCH_CONGESTION", 42),
        ("REQUESTED_CHAN_UNAVAIL", 44),
        ("OUTGOING_CALL_BARRED", 52),
        ("INCOMING_CALL_BARRED", 54),
        ("BEARERCAPABILITY_NOTAUTH", 57),
        ("BEARERCAPABILITY_NOTAVAIL", 58),
        ("BEARERCAPABILITY_NOTIMPL", 65),
        ("FACILITY_NOT_IMPLEMENTED", 69),
        ("SERVICE_NOT_IMPLEMENTED", 79),
        ("INCOMPATIBLE_DESTINATION", 88),
        ("RECOVERY_ON_TIMER_EXPIRE", 102),
        ("ORIGINATOR_CANCEL", 487),
    ];

    fn cause(name: &str) -> HangupCause {
        match name.parse() {
            Ok(c) => c,
            Err(e) => panic!("{name} does not parse: {e}"),
        }
    }

    #[test]
    fn every_spec_row_has_its_sip_response_before_answer() {
        for &(name, sip) in SPEC_TABLE {
            assert_eq!(cause(name).sip_status(), sip, "{name}");
        }
    }

    #[test]
    fn normal_clearing_before_answer_is_480() {
        assert_eq!(HangupCause::NormalClearing.sip_status(), 480);
    }

    #[test]
    fn vocabulary_is_the_spec_list_plus_normal_clearing() {
        assert_eq!(HangupCause::ALL.len(), SPEC_TABLE.len() + 1);
        for c in HangupCause::ALL {
            let listed = SPEC_TABLE.iter().any(|(n, _)| *n == c.as_str());
            assert!(
                listed || *c == HangupCause::NormalClearing,
                "{c} not in the spec"
            );
        }
    }

    #[test]
    fn q850_codes_are_the_itu_values() {
        assert_eq!(Q850_TABLE.len(), HangupCause::ALL.len());
        for &(name, code) in Q850_TABLE {
            assert_eq!(cause(name).q850_code(), code, "{name}");
        }
    }

    #[test]
    fn name_round_trips_through_as_str_from_str_and_serde() {
        for &c in HangupCause::ALL {
            assert_eq!(c.as_str().parse::<HangupCause>(), Ok(c));
            assert_eq!(c.to_string(), c.as_str());
            let json = serde_json::to_value(c).unwrap_or_default();
            assert_eq!(json, serde_json::Value::String(c.as_str().to_owned()));
            let back: HangupCause = serde_json::from_value(json).unwrap_or(HangupCause::NoAnswer);
            assert_eq!(back, c);
        }
    }

    #[test]
    fn unknown_or_miscased_names_are_rejected() {
        assert_eq!(
            "FOO".parse::<HangupCause>(),
            Err(UnknownHangupCause("FOO".into()))
        );
        assert!("normal_clearing".parse::<HangupCause>().is_err());
        assert!("".parse::<HangupCause>().is_err());
        assert!(serde_json::from_str::<HangupCause>("\"BUSY\"").is_err());
        assert!(serde_json::from_str::<HangupCause>("17").is_err());
    }

    #[test]
    fn from_sip_status_follows_rfc_3398() {
        use HangupCause::*;
        let rows: &[(u16, HangupCause)] = &[
            (200, NormalClearing),
            (302, RedirectionToNewDestination),
            (400, NormalTemporaryFailure),
            (401, CallRejected),
            (402, CallRejected),
            (403, CallRejected),
            (404, UnallocatedNumber),
            (405, ServiceNotImplemented),
            (406, ServiceNotImplemented),
            (407, CallRejected),
            (408, RecoveryOnTimerExpire),
            (410, NumberChanged),
            (413, NormalUnspecified),
            (414, NormalUnspecified),
            (415, ServiceNotImplemented),
            (416, NormalUnspecified),
            (420, NormalUnspecified),
            (421, NormalUnspecified),
            (423, NormalUnspecified),
            (480, NoUserResponse),
            (481, NormalTemporaryFailure),
            (482, ExchangeRoutingError),
            (483, ExchangeRoutingError),
            (484, InvalidNumberFormat),
            (485, UnallocatedNumber),
            (486, UserBusy),
            (487, OriginatorCancel),
            (488, IncompatibleDestination),
            (499, NormalTemporaryFailure),
            (500, NormalTemporaryFailure),
            (501, ServiceNotImplemented),
            (502, NetworkOutOfOrder),
            (503, NormalTemporaryFailure),
            (504, RecoveryOnTimerExpire),
            (505, NormalUnspecified),
            (513, NormalUnspecified),
            (580, NormalTemporaryFailure),
            (600, UserBusy),
            (603, CallRejected),
            (604, UnallocatedNumber),
            (606, IncompatibleDestination),
            (607, CallRejected),
            (608, CallRejected),
            (699, UserBusy),
            (180, NormalUnspecified),
            (0, NormalUnspecified),
            (700, NormalUnspecified),
        ];
        for &(status, expected) in rows {
            assert_eq!(HangupCause::from_sip_status(status), expected, "{status}");
        }
    }

    #[test]
    fn reason_header_is_rfc_3326() {
        assert_eq!(
            HangupCause::NormalClearing.reason_header(),
            "Q.850;cause=16;text=\"NORMAL_CLEARING\""
        );
        assert_eq!(
            HangupCause::UserBusy.reason_header(),
            "Q.850;cause=17;text=\"USER_BUSY\""
        );
        assert_eq!(
            HangupCause::RecoveryOnTimerExpire.reason_header(),
            "Q.850;cause=102;text=\"RECOVERY_ON_TIMER_EXPIRE\""
        );
        assert_eq!(
            HangupCause::OriginatorCancel.reason_header(),
            "SIP;cause=487;text=\"ORIGINATOR_CANCEL\""
        );
    }
}
