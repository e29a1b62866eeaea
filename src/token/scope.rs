//! The Docker scope grammar of token requests: `type:name:actions`, where the type is the
//! text before the first `:`, the actions the text after the last `:` (comma-separated),
//! and the name what lies between (reference/protocol.md §1.5). A `scope` value may hold
//! several space-separated scopes; repeated resources are unioned by the caller.
//!
//! The only parser of scope strings. It classifies; what is granted is `policy`'s answer.

use crate::oci::RepoName;

/// One parsed resource scope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    Repository { name: RepoName, actions: Vec<String> },
    Catalog { actions: Vec<String> },
    /// A well-formed scope for something we do not serve (unknown type, an invalid or
    /// host-qualified name): it grants nothing.
    Other,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed scope {0:?}: expected type:name:actions")]
pub struct ScopeError(pub String);

/// Parses one `scope` parameter value (possibly several space-separated scopes).
pub fn parse(value: &str) -> Result<Vec<Scope>, ScopeError> {
    value.split(' ').filter(|s| !s.is_empty()).map(parse_one).collect()
}

fn parse_one(s: &str) -> Result<Scope, ScopeError> {
    let err = || ScopeError(s.chars().take(200).collect());
    let (kind, rest) = s.split_once(':').ok_or_else(err)?;
    let (name, actions) = rest.rsplit_once(':').ok_or_else(err)?;
    let type_ok = |t: &str| !t.is_empty() && t.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    // `repository(plugin)`: the class is deprecated and ignored
    let base = match kind.split_once('(') {
        Some((b, class)) if class.strip_suffix(')').is_some_and(type_ok) => b,
        Some(_) => return Err(err()),
        None => kind,
    };
    if !type_ok(base) || name.is_empty() {
        return Err(err());
    }
    let actions: Vec<String> = actions.split(',').filter(|a| !a.is_empty()).map(str::to_owned).collect();
    Ok(match (base, name) {
        ("repository", n) => match RepoName::parse(n) {
            Ok(name) => Scope::Repository { name, actions },
            Err(_) => Scope::Other,
        },
        ("registry", "catalog") => Scope::Catalog { actions },
        _ => Scope::Other,
    })
}

/// Formats granted access as a space-separated scope string (the POST response's `scope`).
pub fn format_access(access: &crate::access::Access) -> String {
    let mut parts: Vec<String> = access
        .repositories
        .iter()
        .map(|(name, set)| format!("repository:{name}:{}", set.claim_words().collect::<Vec<_>>().join(",")))
        .collect();
    if access.catalog {
        parts.push("registry:catalog:*".into());
    }
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(n: &str, a: &[&str]) -> Scope {
        Scope::Repository { name: RepoName::parse(n).unwrap(), actions: a.iter().map(|s| s.to_string()).collect() }
    }

    #[test]
    fn scopes_parse_as_docker_sends_them() {
        assert_eq!(parse("repository:samples/hello-world:pull,push").unwrap(), vec![repo("samples/hello-world", &["pull", "push"])]);
        assert_eq!(
            parse("repository:a:push,pull repository:a:pull").unwrap(),
            vec![repo("a", &["push", "pull"]), repo("a", &["pull"])]
        );
        assert_eq!(parse("repository(plugin):a:pull").unwrap(), vec![repo("a", &["pull"])]);
        assert_eq!(parse("registry:catalog:*").unwrap(), vec![Scope::Catalog { actions: vec!["*".into()] }]);
        assert_eq!(parse("repository:localhost:5000/a:pull").unwrap(), vec![Scope::Other]);
        assert_eq!(parse("repository:Upper:pull").unwrap(), vec![Scope::Other]);
        assert_eq!(parse("volume:a:pull").unwrap(), vec![Scope::Other]);
        assert_eq!(parse("repository:a:").unwrap(), vec![repo("a", &[])]);
        assert_eq!(parse("").unwrap(), vec![]);
    }

    #[test]
    fn malformed_scopes_are_errors() {
        for bad in ["repository", "repository:a", ":a:pull", "Repo:a:pull", "repository::pull", "repository(x:a:pull"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
