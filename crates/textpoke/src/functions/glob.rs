//! Glob patterns over Rust paths, as ftrace's `set_ftrace_filter`: `*` matches any run of
//! characters (`::` included), `?` any one character; everything else matches itself.

/// Whether `text` matches `pattern`.
pub(crate) fn matches(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    // The classic two-pointer match with one backtrack point: linear in practice.
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(&c) if c == '?' || c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn globs_match_like_ftrace_filters() {
        assert!(matches("app::net::*", "app::net::parse"));
        assert!(matches("app::net::*", "app::net::tcp::send"));
        assert!(!matches("app::net::*", "app::db::query"));
        assert!(matches("*", ""));
        assert!(matches("app::*::send", "app::net::tcp::send"));
        assert!(matches("app::par?e", "app::parse"));
        assert!(!matches("app::par?e", "app::parsse"));
        assert!(matches("*parse*", "app::net::parse_v2"));
        assert!(!matches("app::net", "app::net::parse"));
        assert!(matches("a*b*c", "axxbyyc"));
        assert!(!matches("a*b*c", "axxbyy"));
    }
}
