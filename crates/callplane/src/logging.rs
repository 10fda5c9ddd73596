//! The log output: one line per event on stdout, with control characters that came from the
//! network (NUL, CR, LF inside a field, ESC…) written as escapes, so a crafted header cannot
//! forge log lines or drive a terminal.

use std::io::Write;

/// Writes `line` with every control character except tab and the final newline escaped.
pub fn escape_line(line: &[u8], out: &mut Vec<u8>) {
    let (body, newline) = match line.strip_suffix(b"\n") {
        Some(b) => (b, true),
        None => (line, false),
    };
    for &b in body {
        match b {
            b'\t' => out.push(b),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            0 => out.extend_from_slice(b"\\0"),
            0..=0x1f | 0x7f => {
                let _ = write!(out, "\\x{b:02x}");
            }
            _ => out.push(b),
        }
    }
    if newline {
        out.push(b'\n');
    }
}

/// Standard output through `escape_line`. The formatter hands over each event in one write.
pub struct EscapingStdout;

impl Write for EscapingStdout {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut out = Vec::with_capacity(buf.len() + 16);
        escape_line(buf, &mut out);
        std::io::stdout().lock().write_all(&out)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stdout().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::escape_line;

    #[test]
    fn control_characters_are_escaped_and_the_line_end_kept() {
        let mut out = Vec::new();
        escape_line(b"user=a\0b\r\nFAKE LINE\x1b[31m\tok\x7f\n", &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "user=a\\0b\\r\\nFAKE LINE\\x1b[31m\tok\\x7f\n"
        );
        let mut out = Vec::new();
        escape_line("é plain".as_bytes(), &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), "é plain");
    }
}
