//! `$(VAR)` references in env values, command and args, exactly as upstream's forked
//! `expansion` package: `$$` escapes a `$`, an unknown or unterminated reference stays as
//! written, and a `$` followed by anything else is kept.

/// Expands `$(NAME)` in `input` with `lookup`; unknown names stay `$(NAME)`.
pub fn expand(input: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let bytes = input.as_bytes();
    let mut out = String::with_capacity(input.len());
    let mut checkpoint = 0;
    let mut cursor = 0;
    while cursor < bytes.len() {
        if bytes[cursor] == b'$' && cursor + 1 < bytes.len() {
            out.push_str(&input[checkpoint..cursor]);
            let rest = &input[cursor + 1..];
            let (read, is_var, advance) = read_variable_name(rest);
            if is_var {
                match lookup(read) {
                    Some(value) => out.push_str(&value),
                    None => {
                        out.push_str("$(");
                        out.push_str(read);
                        out.push(')');
                    }
                }
            } else {
                out.push_str(read);
            }
            cursor += advance;
            checkpoint = cursor + 1;
        }
        cursor += 1;
    }
    out.push_str(&input[checkpoint.min(input.len())..]);
    out
}

/// What follows a `$`: (text, whether it names a variable, bytes consumed).
fn read_variable_name(input: &str) -> (&str, bool, usize) {
    match input.as_bytes()[0] {
        // `$$` is an escaped `$`.
        b'$' => ("$", false, 1),
        b'(' => match input[1..].find(')') {
            Some(end) => (&input[1..end + 1], true, end + 2),
            // Unterminated: keep "$(" and go on after it.
            None => ("$(", false, 1),
        },
        // Any other character: keep "$" and let the loop copy the character.
        _ => ("$", false, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "VAR_A" => Some("A".into()),
            "VAR_B" => Some("B".into()),
            "VAR_EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn upstream_cases() {
        let cases = [
            ("$(VAR_A)", "A"),
            ("___$(VAR_B)___", "___B___"),
            ("$(VAR_A)-$(VAR_A)", "A-A"),
            ("$(VAR_EMPTY)", ""),
            ("$(UNKNOWN)", "$(UNKNOWN)"),
            ("$$(VAR_A)", "$(VAR_A)"),
            ("$$$(VAR_A)", "$A"),
            ("$$$$(VAR_A)", "$$(VAR_A)"),
            ("foo$$bar", "foo$bar"),
            ("$(VAR_A", "$(VAR_A"),
            ("$VAR_A", "$VAR_A"),
            ("$", "$"),
            ("foo$", "foo$"),
            ("$()", "$()"),
            ("f00__(VAR_A)__", "f00__(VAR_A)__"),
            ("$(VAR_A)$(VAR_B)", "AB"),
            ("1$(VAR_A)2", "1A2"),
            ("$(VAR_A)$$", "A$"),
        ];
        for (input, want) in cases {
            assert_eq!(expand(input, env), want, "input {input:?}");
        }
    }
}
