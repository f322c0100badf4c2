//! Making text from elsewhere safe to show: a server's error message reaches terminals, logs and
//! records, so it may neither steer a terminal (escape sequences, carriage returns), reorder what
//! is shown (bidirectional controls), nor grow without bound.

/// The longest message that leaves the engine, in characters.
pub const MAX_MESSAGE_CHARS: usize = 1000;

/// `text` with control, bidirectional and other invisible formatting characters replaced by
/// U+FFFD and capped at [`MAX_MESSAGE_CHARS`] (an ellipsis marks a cut).
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_MESSAGE_CHARS * 4));
    for (count, c) in text.chars().enumerate() {
        if count == MAX_MESSAGE_CHARS {
            out.push('…');
            break;
        }
        out.push(if is_unsafe(c) { '\u{fffd}' } else { c });
    }
    out
}

fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(c,
            // Bidirectional embeddings, overrides and isolates, and the implicit marks.
            '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}' | '\u{061c}'
            // Zero-width characters and the line and paragraph separators.
            | '\u{200b}'..='\u{200d}' | '\u{2028}' | '\u{2029}' | '\u{feff}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_bidi_and_length_are_neutralised() {
        let shown = printable("ok \u{1b}[31mred\r\n\u{202e}txt.exe\u{2066}");
        assert!(!shown.chars().any(is_unsafe), "{shown:?}");
        assert!(shown.starts_with("ok \u{fffd}[31mred"), "{shown:?}");
        let long = printable(&"x".repeat(10 * MAX_MESSAGE_CHARS));
        assert_eq!(long.chars().count(), MAX_MESSAGE_CHARS + 1);
        assert_eq!(printable("plain: naïve 例え"), "plain: naïve 例え");
    }
}
