//! DTMF carried in SIP INFO bodies: `application/dtmf-relay` (`Signal=5\r\nDuration=160`)
//! and `application/dtmf` (the digit alone), as sent by Cisco, Polycom, SIPp and others.

/// Extracts the digit from an INFO body; None when the body carries no valid DTMF digit.
pub fn parse_info_dtmf(content_type: Option<&str>, body: &[u8]) -> Option<char> {
    let text = std::str::from_utf8(body).ok()?;
    let ct = content_type.unwrap_or("").to_ascii_lowercase();
    let raw = if ct.contains("dtmf-relay") || text.to_ascii_lowercase().contains("signal") {
        text.lines().find_map(|line| {
            let (k, v) = line.split_once('=')?;
            k.trim().eq_ignore_ascii_case("signal").then(|| v.trim())
        })?
    } else {
        text.trim()
    };
    digit_from_signal(raw)
}

fn digit_from_signal(s: &str) -> Option<char> {
    let mut chars = s.chars();
    let c = chars.next()?;
    if chars.next().is_some() {
        // Some phones send event numbers ("10" for '*', "11" for '#').
        return match s {
            "10" => Some('*'),
            "11" => Some('#'),
            "12" => Some('A'),
            "13" => Some('B'),
            "14" => Some('C'),
            "15" => Some('D'),
            _ => None,
        };
    }
    let c = c.to_ascii_uppercase();
    matches!(c, '0'..='9' | '*' | '#' | 'A'..='D').then_some(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtmf_relay_bodies() {
        let ct = Some("application/dtmf-relay");
        assert_eq!(
            parse_info_dtmf(ct, b"Signal=5\r\nDuration=160\r\n"),
            Some('5')
        );
        assert_eq!(parse_info_dtmf(ct, b"Signal= #\nDuration= 250"), Some('#'));
        assert_eq!(parse_info_dtmf(ct, b"signal=11\r\n"), Some('#'));
        assert_eq!(parse_info_dtmf(ct, b"Duration=160\r\n"), None);
        assert_eq!(parse_info_dtmf(ct, b"Signal=X"), None);
        assert_eq!(parse_info_dtmf(ct, &[0xff, 0xfe]), None);
    }

    #[test]
    fn dtmf_bodies() {
        assert_eq!(parse_info_dtmf(Some("application/dtmf"), b"7"), Some('7'));
        assert_eq!(
            parse_info_dtmf(Some("application/dtmf"), b"*\r\n"),
            Some('*')
        );
        assert_eq!(parse_info_dtmf(Some("application/dtmf"), b""), None);
    }
}
