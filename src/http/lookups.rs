//! Entra ID's lookup of a user by userName, which comes before every
//! create it sends: the lookups that arrive while one query runs share the
//! next, as token lookups do (see [`super::auth::TokenLookups`]).

use crate::jobs::together::Together;
use crate::store::users::{self, UserRow};
use crate::store::{self, Store};

/// (organization id, lower-cased userName)
type Wanted = (String, String);

/// Looks users up by userName for the requests of this process. Each
/// request is answered by a query that started after it arrived, so it
/// sees every change committed before it was sent, as with a query of its
/// own; only rows of the request's own organization answer it.
pub struct UserNameLookups {
    lookups: Together<Wanted, Result<Option<UserRow>, store::Error>>,
}

impl UserNameLookups {
    /// Most lookups one query answers.
    const MOST: usize = 64;

    /// Starts the lookups on the current runtime; they end with the last
    /// handle.
    pub fn start(store: Store) -> Self {
        let lookups = Together::start(Self::MOST, move |wanted: Vec<Wanted>| {
            let store = store.clone();
            async move {
                let asked = wanted.clone();
                let found = store
                    .run(move |c| {
                        users::find_by_user_name_keys(c, &asked).map_err(store::Error::from)
                    })
                    .await;
                wanted
                    .iter()
                    .map(|(org, key)| match &found {
                        Ok(rows) => Ok(rows
                            .iter()
                            .find(|r| &r.org_id == org && &r.user_name_key == key)
                            .cloned()),
                        Err(e) => Err(e.shared()),
                    })
                    .collect()
            }
        });
        UserNameLookups { lookups }
    }

    /// The user of organization `org_id` whose lower-cased userName is `key`.
    pub async fn find(&self, org_id: String, key: String) -> Result<Option<UserRow>, store::Error> {
        self.lookups
            .call((org_id, key))
            .await
            .unwrap_or(Err(store::Error::Cancelled))
    }
}
