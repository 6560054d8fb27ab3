//! Turning untrusted strings (from a worker, i.e. from a disk, or from a
//! client) into something safe to log, display and pass to mount(2).

/// Longest sanitized string, in bytes (NAME_MAX).
pub const MAX_BYTES: usize = 255;

/// Lossy UTF-8, control characters stripped, at most [`MAX_BYTES`] bytes
/// (cut on a character boundary). For labels and names shown to people.
pub fn display(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::new();
    for c in text.chars().filter(|c| !c.is_control()) {
        if out.len() + c.len_utf8() > MAX_BYTES {
            break;
        }
        out.push(c);
    }
    out
}

/// A name for mount(2)'s source argument and /proc/self/mountinfo: like
/// [`display`], plus no commas and no whitespace (each becomes `_`), never
/// empty.
pub fn mount_source(raw: &str) -> String {
    let cleaned: String = display(raw.as_bytes())
        .chars()
        .map(|c| {
            if c == ',' || c.is_whitespace() {
                '_'
            } else {
                c
            }
        })
        .collect();
    if cleaned.is_empty() {
        "safemount".to_owned()
    } else {
        cleaned
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_strips_control_characters() {
        assert_eq!(display(b"ab\x1b[31mc\n\x7fd\0"), "ab[31mcd");
    }

    #[test]
    fn display_replaces_invalid_utf8() {
        assert_eq!(display(b"a\xffb"), "a\u{fffd}b");
    }

    #[test]
    fn display_caps_length_on_char_boundary() {
        let long = "é".repeat(200); // 400 bytes
        let out = display(long.as_bytes());
        assert!(out.len() <= MAX_BYTES);
        assert_eq!(out.len(), 254);
        assert!(out.chars().all(|c| c == 'é'));
        assert_eq!(display(&[b'x'; 1000]).len(), MAX_BYTES);
    }

    #[test]
    fn display_keeps_ordinary_labels() {
        assert_eq!(display(b"My Disk"), "My Disk");
        assert_eq!(display(b""), "");
    }

    #[test]
    fn mount_source_has_no_commas_or_whitespace() {
        // Tabs are control characters: stripped, not replaced.
        assert_eq!(mount_source("a b,c\td\u{a0}e"), "a_b_cd_e");
        assert_eq!(mount_source("\n\t"), "safemount");
        assert_eq!(mount_source(""), "safemount");
        assert_eq!(mount_source("/dev/loop0"), "/dev/loop0");
    }
}
