//! SCIM tokens: issued once, stored as hashes, revocable.

use anyhow::{Context, bail};
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::store::{Store, orgs, tokens};

/// Tokens start with this, so a leaked one is recognisable in a scan.
const PREFIX: &str = "scimsync_";

/// A new random SCIM token: 256 bits from the OS generator.
pub fn generate_token() -> String {
    random_secret(PREFIX)
}

/// 256 random bits, hex, after `prefix` (tokens, invitation links).
pub fn random_secret(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{prefix}{}", hex::encode(bytes))
}

/// The stored form of a token: SHA-256, hex. A fast hash is enough because
/// the token has 256 bits of entropy; there is nothing to brute-force.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A token as listed: never its value.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TokenInfo {
    pub id: String,
    pub org: String,
    pub label: String,
    pub created_at: String,
    pub last_used_at: Option<String>,
    pub revoked_at: Option<String>,
}

/// A token just issued; `token` is shown once and never again.
#[derive(Clone)]
pub struct IssuedToken {
    pub info: TokenInfo,
    pub token: String,
}

impl std::fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedToken")
            .field("info", &self.info)
            .field("token", &"***")
            .finish()
    }
}

fn info(row: tokens::TokenRow, org: &str) -> TokenInfo {
    let fmt = |t: chrono::NaiveDateTime| {
        t.and_utc()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    };
    TokenInfo {
        id: row.id,
        org: org.to_owned(),
        label: row.label,
        created_at: fmt(row.created_at),
        last_used_at: row.last_used_at.map(fmt),
        revoked_at: row.revoked_at.map(fmt),
    }
}

pub async fn create(store: &Store, org_slug: &str, label: &str) -> anyhow::Result<IssuedToken> {
    create_from(store, org_slug, label, generate_token()).await
}

/// Stores `token`, made by [`generate_token`], as a live token of the
/// organization: for a caller that must put the token somewhere safe
/// before it may be used (the first start's token file).
pub async fn create_from(
    store: &Store,
    org_slug: &str,
    label: &str,
    token: String,
) -> anyhow::Result<IssuedToken> {
    let slug = org_slug.to_owned();
    let label = label.to_owned();
    let hash = hash_token(&token);
    let row = store
        .run(move |c| -> anyhow::Result<tokens::TokenRow> {
            let Some(org) = orgs::find_by_slug(c, &slug)? else {
                bail!("no organization \"{slug}\"; `scimsync org list` shows them");
            };
            Ok(tokens::insert(c, &org.id, &hash, &label)?)
        })
        .await
        .context("cannot create the token")?;
    Ok(IssuedToken {
        info: info(row, org_slug),
        token,
    })
}

pub async fn list(store: &Store, org_slug: &str) -> anyhow::Result<Vec<TokenInfo>> {
    let slug = org_slug.to_owned();
    store
        .run(move |c| -> anyhow::Result<Vec<TokenInfo>> {
            let Some(org) = orgs::find_by_slug(c, &slug)? else {
                bail!("no organization \"{slug}\"; `scimsync org list` shows them");
            };
            Ok(tokens::list_for_org(c, &org.id)?
                .into_iter()
                .map(|r| info(r, &slug))
                .collect())
        })
        .await
}

/// Revokes a token by id; it is refused from the next request on.
pub async fn revoke(store: &Store, id: &str) -> anyhow::Result<()> {
    let id = id.to_owned();
    let found = store
        .run(move |c| tokens::revoke(c, &id).map_err(crate::store::Error::from))
        .await?;
    if !found {
        bail!("no live token with that id; `scimsync token list ORG` shows them");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_random_and_prefixed() {
        let a = generate_token();
        let b = generate_token();
        assert!(a.starts_with(PREFIX));
        assert_eq!(a.len(), PREFIX.len() + 64);
        assert_ne!(a, b);
    }

    #[test]
    fn hash_is_sha256_hex_and_not_the_token() {
        let h = hash_token("abc");
        assert_eq!(
            h,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
