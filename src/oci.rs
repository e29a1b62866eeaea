//! OCI distribution vocabulary: repository names, tags, digests, manifest references and
//! upload ids. Each is a newtype that only its grammar's parser can build, so a value of
//! one of these types is proof that the text was checked.
//!
//! This module parses and formats; it decides nothing, knows no HTTP and does no I/O.
//! Parsers reject, they never repair: no lower-casing, no trimming, no decoding.

use std::fmt;

/// Longest repository name accepted (the OCI limit most clients apply).
pub const MAX_NAME_LEN: usize = 255;
/// Longest upload id accepted; distribution issues UUIDs (36 bytes).
const MAX_UPLOAD_ID_LEN: usize = 256;

/// Why a piece of text is not what its grammar demands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrammarError {
    #[error("invalid repository name {0:?}: expected lower-case components [a-z0-9] joined by '.', '_', '__' or '-', separated by '/', at most 255 characters")]
    Name(String),
    #[error("invalid tag {0:?}: expected [A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}")]
    Tag(String),
    #[error("invalid digest {0:?}: expected sha256:<64 hex>, sha384:<96 hex> or sha512:<128 hex>, lower case")]
    Digest(String),
    #[error("invalid upload id {0:?}")]
    UploadId(String),
}

/// A repository name in the OCI grammar:
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`, ≤ 255 bytes.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoName(Box<str>);

impl RepoName {
    pub fn parse(s: &str) -> Result<Self, GrammarError> {
        if s.is_empty() || s.len() > MAX_NAME_LEN || !s.split('/').all(is_name_component) {
            return Err(GrammarError::Name(s.to_owned()));
        }
        Ok(RepoName(s.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The names this one lies below, nearest first: `a/b/c` yields `a/b`, then `a`.
    pub fn ancestors(&self) -> impl Iterator<Item = &str> {
        let s: &str = &self.0;
        s.rmatch_indices('/').map(move |(i, _)| s.get(..i).unwrap_or_default())
    }
}

/// One path component: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn is_name_component(c: &str) -> bool {
    let b = c.as_bytes();
    let mut i = 0;
    loop {
        let run = b.iter().skip(i).take_while(|x| x.is_ascii_lowercase() || x.is_ascii_digit()).count();
        if run == 0 {
            return false;
        }
        i += run;
        match b.get(i) {
            None => return true,
            Some(b'.') => i += 1,
            Some(b'_') => {
                i += 1;
                if b.get(i) == Some(&b'_') {
                    i += 1;
                }
            }
            Some(b'-') => i += b.iter().skip(i).take_while(|x| **x == b'-').count(),
            Some(_) => return false,
        }
    }
}

/// A tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}` (ASCII only).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(Box<str>);

impl Tag {
    pub fn parse(s: &str) -> Result<Self, GrammarError> {
        let b = s.as_bytes();
        let first_ok = b.first().is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_');
        let rest_ok = b.iter().skip(1).all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'));
        if first_ok && rest_ok && b.len() <= 128 {
            Ok(Tag(s.into()))
        } else {
            Err(GrammarError::Tag(s.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A content digest of a registered algorithm with its exact encoded length, lower hex.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(Box<str>);

impl Digest {
    pub fn parse(s: &str) -> Result<Self, GrammarError> {
        let ok = match s.split_once(':') {
            Some((alg, hex)) => {
                let want = match alg {
                    "sha256" => 64,
                    "sha384" => 96,
                    "sha512" => 128,
                    _ => 0,
                };
                want != 0 && hex.len() == want && hex.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
            }
            None => false,
        };
        if ok {
            Ok(Digest(s.into()))
        } else {
            Err(GrammarError::Digest(s.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What a manifest route names: a tag, or a digest. Text holding `:` must be a valid digest;
/// it is never taken for a tag (distribution would treat `sha256:ZZ` as one).
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Reference {
    Tag(Tag),
    Digest(Digest),
}

impl Reference {
    pub fn parse(s: &str) -> Result<Self, GrammarError> {
        if s.contains(':') {
            Digest::parse(s).map(Reference::Digest)
        } else {
            Tag::parse(s).map(Reference::Tag)
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Reference::Tag(t) => t.as_str(),
            Reference::Digest(d) => d.as_str(),
        }
    }
}

/// An upload session id as distribution's route admits it: `[a-zA-Z0-9-_.=]+`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct UploadId(Box<str>);

impl UploadId {
    pub fn parse(s: &str) -> Result<Self, GrammarError> {
        let ok = !s.is_empty()
            && s.len() <= MAX_UPLOAD_ID_LEN
            && s.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b'='));
        if ok {
            Ok(UploadId(s.into()))
        } else {
            Err(GrammarError::UploadId(s.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

macro_rules! text_impls {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", self.as_str())
            }
        }
    )*};
}
text_impls!(RepoName, Tag, Digest, Reference, UploadId);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_names_follow_the_oci_grammar() {
        for ok in ["a", "samples/hello-world", "a.b_c__d---e/f0", "x/blobs/uploads", "0/1/2"] {
            assert!(RepoName::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "A", "Foo/bar", "a//b", "/a", "a/", "a..b", "a___b", "a._b", "-a", "a-", "a_", "_a",
            "localhost:5000/a", "a%2Fb", "a/./b", "a/../b", "é", "a b",
        ] {
            assert!(RepoName::parse(bad).is_err(), "{bad}");
        }
        assert!(RepoName::parse(&"a".repeat(255)).is_ok());
        assert!(RepoName::parse(&"a".repeat(256)).is_err());
    }

    #[test]
    fn ancestors_walk_up_the_name() {
        let n = RepoName::parse("a/b/c").unwrap();
        assert_eq!(n.ancestors().collect::<Vec<_>>(), ["a/b", "a"]);
        assert_eq!(RepoName::parse("a").unwrap().ancestors().count(), 0);
    }

    #[test]
    fn tags_and_digests() {
        assert!(Tag::parse("v1.0-rc_1").is_ok());
        assert!(Tag::parse("_x").is_ok());
        assert!(Tag::parse(".x").is_err());
        assert!(Tag::parse(&"a".repeat(129)).is_err());
        let hex = "a".repeat(64);
        assert!(Digest::parse(&format!("sha256:{hex}")).is_ok());
        assert!(Digest::parse(&format!("sha256:{}", hex.to_uppercase())).is_err());
        assert!(Digest::parse("sha256:ZZ").is_err());
        assert!(Digest::parse(&format!("md5:{hex}")).is_err());
        assert!(matches!(Reference::parse("sha256:ZZ"), Err(GrammarError::Digest(_))));
        assert!(matches!(Reference::parse("latest"), Ok(Reference::Tag(_))));
        assert!(UploadId::parse("0f2c-ab_=.x").is_ok());
        assert!(UploadId::parse("a:b").is_err());
    }
}
