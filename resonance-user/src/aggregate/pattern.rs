//! The one name pattern of the config (service rules, broker policy
//! rules): `*` matches any run of characters, `/` included; every other
//! character, `?`, `[`, `{` and `\` too, stands for itself. Compiled once
//! per rule with globset rather than matched by hand at every lookup.

use globset::GlobBuilder;

/// A compiled pattern.
#[derive(Clone, Debug)]
pub struct Pattern {
    matcher: Option<globset::GlobMatcher>,
    text: String,
}

impl Pattern {
    /// Compiles `text`. Only `*` is special, so every text compiles; were
    /// globset ever to refuse one, the pattern matches exactly its text.
    pub fn new(text: &str) -> Self {
        let glob = text
            .split('*')
            .map(globset::escape)
            .collect::<Vec<_>>()
            .join("*");
        let matcher = GlobBuilder::new(&glob)
            .literal_separator(false)
            .backslash_escape(false)
            .build()
            .ok()
            .map(|glob| glob.compile_matcher());
        Self {
            matcher,
            text: text.to_owned(),
        }
    }

    /// Whether `text` matches the whole pattern.
    pub fn matches(&self, text: &str) -> bool {
        match &self.matcher {
            Some(matcher) => matcher.is_match(text),
            None => text == self.text,
        }
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

#[cfg(test)]
mod tests {
    use super::Pattern;

    fn glob(pattern: &str, text: &str) -> bool {
        Pattern::new(pattern).matches(text)
    }

    #[test]
    fn a_star_matches_any_run_of_characters_slashes_included() {
        assert!(glob(
            "/system.slice/*.service",
            "/system.slice/nginx.service"
        ));
        assert!(glob("/system.slice/*", "/system.slice/a/b.scope"));
        assert!(glob("postgres*", "postgres"));
        assert!(glob("*fpm*", "php-fpm8.2"));
        assert!(glob("*", ""));
        assert!(!glob("postgres*", "pg_ctl"));
        assert!(!glob("a*b*c", "abx"));
        assert!(glob("a*b*c", "a-b-b-c"));
        assert!(glob("exact", "exact"));
        assert!(!glob("exact", "exactly"));
        assert!(!glob("", "x"));
    }

    #[test]
    fn every_other_character_is_literal() {
        assert!(glob("app?", "app?"));
        assert!(!glob("app?", "app1"));
        assert!(glob("[db]*", "[db]-main"));
        assert!(!glob("[db]*", "d"));
        assert!(glob("{a,b}", "{a,b}"));
        assert!(!glob("{a,b}", "a"));
        assert!(glob(r"c:\tmp*", r"c:\tmp\x"));
        assert!(glob("user-1000.slice/*", "user-1000.slice/session-4.scope"));
    }
}
