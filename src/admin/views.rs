//! JSON shapes of the admin API, modelled on `az acr scope-map` and `az acr token` output:
//! request bodies (unknown fields refused) and the views of scope maps and tokens. A view
//! of a token shows password metadata only; a password value appears solely in the answer
//! that created it.

use serde::Deserialize;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::auth::secret::Secret;
use crate::policy::{ApiKey, MapKind, RepoPattern, ScopeMap, Slot, Token};

pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

/// `{"repository": "samples/*", "actions": ["content/read"]}`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepoActions {
    pub repository: String,
    pub actions: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CreateScopeMap {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    pub repositories: Vec<RepoActions>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UpdateScopeMap {
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub add_repositories: Vec<RepoActions>,
    #[serde(default)]
    pub remove_repositories: Vec<RepoActions>,
}

/// When a password expires: in N days, or at an RFC 3339 time.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Expiration {
    #[serde(default)]
    pub expiration_in_days: Option<u32>,
    #[serde(default)]
    pub expiration: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CreateToken {
    pub name: String,
    #[serde(default)]
    pub scope_map: Option<String>,
    #[serde(default)]
    pub repositories: Vec<RepoActions>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub expiration_in_days: Option<u32>,
    #[serde(default)]
    pub expiration: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UpdateToken {
    #[serde(default)]
    pub scope_map: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GenerateCredentials {
    #[serde(default)]
    pub password1: bool,
    #[serde(default)]
    pub password2: bool,
    #[serde(default)]
    pub expiration_in_days: Option<u32>,
    #[serde(default)]
    pub expiration: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SetAnonymous {
    /// Required; `null` switches anonymous access off (outer `None`: the key was missing).
    #[serde(default, deserialize_with = "present")]
    pub scope_map: Option<Option<String>>,
}

/// Marks a key as present, so `null` and "missing" differ.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// ACR's flat action form: `repositories/<pattern>/<action>`.
pub fn scope_map_view(m: &ScopeMap) -> Value {
    let actions: Vec<String> = m
        .rules()
        .iter()
        .flat_map(|(p, set)| set.iter().map(move |a| format!("repositories/{}/{}", pattern_text(p), a.as_str())))
        .collect();
    json!({
        "name": m.name.as_str(),
        "type": match m.kind { MapKind::SystemDefined => "SystemDefined", MapKind::UserDefined => "UserDefined" },
        "description": m.description,
        "creationDate": if m.kind == MapKind::SystemDefined { Value::Null } else { rfc3339(m.created).into() },
        "actions": actions,
    })
}

fn pattern_text(p: &RepoPattern) -> String {
    p.to_string()
}

/// A token; `fresh` holds password values just generated (shown once).
pub fn token_view(t: &Token, fresh: &[(Slot, Secret)]) -> Value {
    let passwords: Vec<Value> = t
        .passwords()
        .map(|(slot, p)| {
            let mut v = json!({
                "name": slot.as_str(),
                "creationTime": rfc3339(p.created),
                "expiry": p.expiry.map(rfc3339),
            });
            if let (Some((_, s)), Some(obj)) = (fresh.iter().find(|(fs, _)| *fs == slot), v.as_object_mut()) {
                obj.insert("value".into(), s.expose().into());
            }
            v
        })
        .collect();
    json!({
        "name": t.name.as_str(),
        "status": t.status.as_str(),
        "scopeMap": t.scope_map.as_str(),
        "creationDate": rfc3339(t.created),
        "credentials": { "username": t.name.as_str(), "passwords": passwords },
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CreateApiKey {
    pub name: String,
    pub scope_map: String,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub expiration_in_days: Option<u32>,
    #[serde(default)]
    pub expiration: Option<String>,
}

/// An API key; `fresh` is its value, present only in the answer that created it.
pub fn api_key_view(k: &ApiKey, fresh: Option<&Secret>) -> Value {
    let mut v = json!({
        "name": k.name.as_str(),
        "scopeMap": k.scope_map.as_str(),
        "status": k.status.as_str(),
        "creationDate": rfc3339(k.created),
        "expiry": k.expiry.map(rfc3339),
        "username": crate::auth::APIKEY_USERNAME,
    });
    if let (Some(s), Some(obj)) = (fresh, v.as_object_mut()) {
        obj.insert("key".into(), s.expose().into());
    }
    v
}
