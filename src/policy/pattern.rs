//! Repository patterns of scope maps: an exact name, `prefix/*` (any depth below the
//! prefix, never the prefix itself, never `prefixv2`), or `*`. Literal text only: no regex,
//! no templating, no case folding.

use std::fmt;

use crate::oci::{GrammarError, RepoName};

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RepoPattern {
    Any,
    Prefix(RepoName),
    Exact(RepoName),
}

impl RepoPattern {
    pub fn parse(s: &str) -> Result<RepoPattern, GrammarError> {
        if s == "*" {
            return Ok(RepoPattern::Any);
        }
        match s.strip_suffix("/*") {
            Some(prefix) => RepoName::parse(prefix).map(RepoPattern::Prefix).map_err(|_| GrammarError::Name(s.to_owned())),
            None => RepoName::parse(s).map(RepoPattern::Exact),
        }
    }

    pub fn matches(&self, repo: &RepoName) -> bool {
        match self {
            RepoPattern::Any => true,
            RepoPattern::Exact(n) => n == repo,
            RepoPattern::Prefix(p) => repo.ancestors().any(|a| a == p.as_str()),
        }
    }
}

impl fmt::Display for RepoPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RepoPattern::Any => f.write_str("*"),
            RepoPattern::Prefix(p) => write!(f, "{p}/*"),
            RepoPattern::Exact(n) => write!(f, "{n}"),
        }
    }
}

impl fmt::Debug for RepoPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> RepoName {
        RepoName::parse(s).unwrap()
    }

    #[test]
    fn prefix_patterns_match_below_the_prefix_only() {
        let p = RepoPattern::parse("application/frontend/*").unwrap();
        assert!(p.matches(&n("application/frontend/web")));
        assert!(p.matches(&n("application/frontend/a/b/c")));
        assert!(!p.matches(&n("application/frontend")));
        assert!(!p.matches(&n("application/frontendv1/web")));
        assert!(!p.matches(&n("other/application/frontend/web")));
        assert!(RepoPattern::parse("*").unwrap().matches(&n("x")));
        assert!(RepoPattern::parse("a").unwrap().matches(&n("a")));
        assert!(!RepoPattern::parse("a").unwrap().matches(&n("a/b")));
    }

    #[test]
    fn bad_patterns_are_refused() {
        for bad in ["", "a*", "a/**", "*/a", "A/*", "a/*/b", "/*", "a/b*"] {
            assert!(RepoPattern::parse(bad).is_err(), "{bad}");
        }
    }
}
