//! Glob patterns over Rust paths, as ftrace's `set_ftrace_filter`: `*` matches any run of
//! characters (`::` included), `?` any one character; everything else matches itself.

/// Whether `text` matches `pattern`.
pub(crate) fn matches(pattern: &str, text: &str) -> bool {
    Glob::new(pattern).matches(text)
}

/// A pattern ready to match many names: where its literal start ends is found once.
#[derive(Clone, Copy)]
pub(crate) struct Glob<'a> {
    pattern: &'a str,
    /// Bytes before the first wildcard; `None` when there is none.
    literal: Option<usize>,
}

impl<'a> Glob<'a> {
    pub(crate) fn new(pattern: &'a str) -> Self {
        Glob {
            pattern,
            literal: pattern.find(['*', '?']),
        }
    }

    /// Whether `text` matches. Allocates nothing: a listing matches thousands of names.
    pub(crate) fn matches(&self, text: &str) -> bool {
        let pattern = self.pattern;
        // Most patterns start with a literal path (`app::net::*`), or are one: compare that
        // part as bytes, and walk chars only from the first wildcard on.
        let Some(lit) = self.literal else {
            return pattern == text;
        };
        if !text.starts_with(&pattern[..lit]) {
            return false;
        }
        // The classic two-pointer match with one backtrack point, over byte offsets of chars:
        // linear in practice.
        let next = |s: &str, at: usize| s[at..].chars().next().map(|c| (c, at + c.len_utf8()));
        let (mut pi, mut ti) = (lit, lit);
        let mut star: Option<(usize, usize)> = None;
        while let Some((tc, t_after)) = next(text, ti) {
            match next(pattern, pi) {
                Some(('*', p_after)) => {
                    star = Some((pi, ti));
                    pi = p_after;
                }
                Some((pc, p_after)) if pc == '?' || pc == tc => {
                    pi = p_after;
                    ti = t_after;
                }
                _ => match star {
                    Some((sp, st)) => {
                        // Let the star take one more char of the text.
                        let st = st + next(text, st).map_or(0, |(c, _)| c.len_utf8());
                        pi = sp + 1;
                        ti = st;
                        star = Some((sp, st));
                    }
                    None => return false,
                },
            }
        }
        pattern[pi..].chars().all(|c| c == '*')
    }
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
        // Characters, not bytes: `?` takes one whole char.
        assert!(matches("app::?t", "app::ét"));
        assert!(matches("*é*", "app::été"));
        assert!(!matches("app::?", "app::éé"));
        assert!(matches("**", "x"));
    }
}
