//! The simulated tenant: users, groups, memberships and one incremental
//! cycle's changes, generated deterministically from a seed, and the
//! request bodies Entra ID sends for them (docs/entra.md §2, default dialect).

use std::collections::HashSet;

use serde_json::{Value, json};

/// What to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spec {
    /// Users in scope.
    pub users: usize,
    /// Groups in scope.
    pub groups: usize,
    /// Average members per group (each group gets between half and one and
    /// a half times this, never more than there are users).
    pub members_per_group: usize,
    /// Changes in the incremental cycle: about half attribute updates, a
    /// quarter deactivations, a quarter member removals.
    pub incremental: usize,
    /// Everything generated follows from this.
    pub seed: u64,
}

/// One user as the source directory holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// `user{i}-{seed}@example.com`; also the work email.
    pub user_name: String,
    /// A GUID, as Entra's objectId or mailNickname would be.
    pub external_id: String,
    pub given_name: String,
    pub family_name: String,
    pub department: String,
}

/// One group, which the service turns into a team.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// `group{g}-{seed}`; unique, as Entra requires of group names.
    pub display_name: String,
    /// A GUID, as Entra's objectId.
    pub external_id: String,
    /// Indexes into [`Plan::users`], distinct.
    pub members: Vec<usize>,
}

/// One change of the incremental cycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// New name and department for a user.
    UpdateUser {
        user: usize,
        given_name: String,
        family_name: String,
        department: String,
    },
    /// `active` set to `"False"`, as when the user is unassigned in Entra.
    Deactivate { user: usize },
    /// One member taken out of one group.
    RemoveMember { group: usize, user: usize },
}

/// Everything one run sends, in the order Entra sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub spec: Spec,
    pub users: Vec<User>,
    pub groups: Vec<Group>,
    /// The incremental cycle, shuffled; no user is both updated and
    /// deactivated, and no membership is removed twice.
    pub changes: Vec<Change>,
}

impl Plan {
    /// Generates the tenant. The same spec always gives the same plan, and
    /// users do not depend on the group or incremental sizes.
    pub fn generate(spec: Spec) -> Plan {
        let mut rng = Rng::new(spec.seed, 1);
        let users: Vec<User> = (0..spec.users)
            .map(|i| User {
                user_name: format!("user{i}-{}@example.com", spec.seed),
                external_id: rng.guid(),
                given_name: rng.pick(GIVEN_NAMES).to_owned(),
                family_name: rng.pick(FAMILY_NAMES).to_owned(),
                department: rng.pick(DEPARTMENTS).to_owned(),
            })
            .collect();

        let mut rng = Rng::new(spec.seed, 2);
        let average = spec.members_per_group.min(spec.users);
        let groups: Vec<Group> = (0..spec.groups)
            .map(|g| {
                let low = average / 2;
                let high = (average + average / 2).min(spec.users);
                let size = low + rng.below(high - low + 1);
                Group {
                    display_name: format!("group{g}-{}", spec.seed),
                    external_id: rng.guid(),
                    members: rng.sample(spec.users, size),
                }
            })
            .collect();

        let mut rng = Rng::new(spec.seed, 3);
        let memberships: usize = groups.iter().map(|g| g.members.len()).sum();
        let deactivations = (spec.incremental / 4).min(spec.users);
        let removals = (spec.incremental / 4).min(memberships);
        let updates = (spec.incremental - deactivations - removals).min(spec.users - deactivations);
        let touched = rng.sample(spec.users, updates + deactivations);
        let mut changes: Vec<Change> = Vec::with_capacity(updates + deactivations + removals);
        for (n, &user) in touched.iter().enumerate() {
            changes.push(if n < updates {
                Change::UpdateUser {
                    user,
                    given_name: rng.pick(GIVEN_NAMES).to_owned(),
                    family_name: format!("{}-{}", rng.pick(FAMILY_NAMES), rng.below(1000)),
                    department: rng.pick(DEPARTMENTS).to_owned(),
                }
            } else {
                Change::Deactivate { user }
            });
        }
        let starts: Vec<usize> = groups
            .iter()
            .scan(0, |at, g| {
                let start = *at;
                *at += g.members.len();
                Some(start)
            })
            .collect();
        for flat in rng.sample(memberships, removals) {
            // The last group whose first membership is at or before `flat`.
            let group = starts.partition_point(|&s| s <= flat).saturating_sub(1);
            let start = starts.get(group).copied().unwrap_or(0);
            if let Some(&user) = groups.get(group).and_then(|g| g.members.get(flat - start)) {
                changes.push(Change::RemoveMember { group, user });
            }
        }
        rng.shuffle(&mut changes);

        Plan {
            spec,
            users,
            groups,
            changes,
        }
    }

    /// Memberships added in the initial cycle.
    pub fn memberships(&self) -> usize {
        self.groups.iter().map(|g| g.members.len()).sum()
    }

    /// Users the incremental cycle deactivates.
    pub fn deactivated(&self) -> HashSet<usize> {
        self.changes
            .iter()
            .filter_map(|c| match c {
                Change::Deactivate { user } => Some(*user),
                _ => None,
            })
            .collect()
    }

    /// Members of `group` once the incremental cycle has run.
    pub fn final_members(&self, group: usize) -> Vec<usize> {
        let removed: HashSet<usize> = self
            .changes
            .iter()
            .filter_map(|c| match c {
                Change::RemoveMember { group: g, user } if *g == group => Some(*user),
                _ => None,
            })
            .collect();
        self.groups
            .get(group)
            .map(|g| {
                g.members
                    .iter()
                    .copied()
                    .filter(|u| !removed.contains(u))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The core and enterprise User schema URIs and the PatchOp message URI.
const USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
const ENTERPRISE_SCHEMA: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
const GROUP_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
/// Entra still lists this Microsoft URI when it creates a group.
const ADSCIM_GROUP_SCHEMA: &str =
    "http://schemas.microsoft.com/2006/11/ResourceManagement/ADSCIM/2.0/Group";
const PATCH_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";

/// `filter=<attribute> eq "<value>"` form-encoded as Entra puts it on the
/// wire: `+` for spaces, `%22` for the quotes.
pub fn eq_filter(attribute: &str, value: &str) -> String {
    let filter = format!("{attribute} eq \"{value}\"");
    let encoded: String = url::form_urlencoded::byte_serialize(filter.as_bytes()).collect();
    format!("filter={encoded}")
}

/// POST /Users as in Microsoft's tutorial: both schema URIs, a client
/// `meta`, the work email, the name, and an empty `roles`.
pub fn create_user_body(user: &User) -> Value {
    json!({
        "schemas": [USER_SCHEMA, ENTERPRISE_SCHEMA],
        "externalId": user.external_id,
        "userName": user.user_name,
        "active": true,
        "emails": [{"primary": true, "type": "work", "value": user.user_name}],
        "meta": {"resourceType": "User"},
        "name": {
            "formatted": format!("{} {}", user.given_name, user.family_name),
            "familyName": user.family_name,
            "givenName": user.given_name,
        },
        ENTERPRISE_SCHEMA: {"department": user.department},
        "roles": [],
    })
}

/// POST /Groups as Entra sends it, with the extra ADSCIM schema URI and no
/// members (they follow in PATCHes).
pub fn create_group_body(group: &Group) -> Value {
    json!({
        "schemas": [GROUP_SCHEMA, ADSCIM_GROUP_SCHEMA],
        "externalId": group.external_id,
        "displayName": group.display_name,
        "meta": {"resourceType": "Group"},
    })
}

fn patch(operations: Value) -> Value {
    json!({"schemas": [PATCH_SCHEMA], "Operations": operations})
}

/// One batch of members added to a group.
pub fn add_members_body<'a>(ids: impl IntoIterator<Item = &'a str>) -> Value {
    let value: Vec<Value> = ids.into_iter().map(|id| json!({"value": id})).collect();
    patch(json!([{"op": "Add", "path": "members", "value": value}]))
}

/// Entra's default dialect: one capitalised `Replace` per attribute.
pub fn update_user_body(given_name: &str, family_name: &str, department: &str) -> Value {
    patch(json!([
        {"op": "Replace", "path": "name.givenName", "value": given_name},
        {"op": "Replace", "path": "name.familyName", "value": family_name},
        {"op": "Replace", "path": format!("{ENTERPRISE_SCHEMA}:department"), "value": department},
    ]))
}

/// Deactivation with `active` as the string `"False"`, as Entra sends it by
/// default.
pub fn deactivate_body() -> Value {
    patch(json!([{"op": "Replace", "path": "active", "value": "False"}]))
}

/// Entra's default member removal: `Remove` on `members` with a value that
/// names the member (an RFC-literal server would remove everyone).
pub fn remove_member_body(id: &str) -> Value {
    patch(json!([{"op": "Remove", "path": "members", "value": [{"value": id}]}]))
}

/// SplitMix64: small, fast, and its output for a seed never changes, unlike
/// `rand`'s `StdRng`, which may change between releases.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    /// A stream for one part of the plan, so that the parts do not shift
    /// each other.
    fn new(seed: u64, stream: u64) -> Rng {
        Rng(seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03))
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when n is 0).
    fn below(&mut self, n: usize) -> usize {
        // Lemire's multiply-shift; its bias is far below what matters here.
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items.get(self.below(items.len())).copied().unwrap_or("")
    }

    fn guid(&mut self) -> String {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.next_u64().to_le_bytes());
        bytes[8..].copy_from_slice(&self.next_u64().to_le_bytes());
        uuid::Builder::from_random_bytes(bytes)
            .into_uuid()
            .hyphenated()
            .to_string()
    }

    /// `k` distinct values of `0..n` (all of them when k ≥ n), by Floyd's
    /// algorithm: k steps whatever n is.
    fn sample(&mut self, n: usize, k: usize) -> Vec<usize> {
        let k = k.min(n);
        let mut seen = HashSet::with_capacity(k);
        let mut out = Vec::with_capacity(k);
        for j in n - k..n {
            let t = self.below(j + 1);
            let pick = if seen.insert(t) { t } else { j };
            seen.insert(pick);
            out.push(pick);
        }
        out
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }
}

const GIVEN_NAMES: &[&str] = &[
    "Ada", "Alan", "Barbara", "Claude", "Donald", "Edsger", "Frances", "Grace", "Hedy", "Ivan",
    "Jean", "Ken", "Leslie", "Margaret", "Niklaus", "Ole", "Radia", "Shafi", "Tim", "Vint",
];

const FAMILY_NAMES: &[&str] = &[
    "Lovelace",
    "Turing",
    "Liskov",
    "Shannon",
    "Knuth",
    "Dijkstra",
    "Allen",
    "Hopper",
    "Lamarr",
    "Sutherland",
    "Sammet",
    "Thompson",
    "Lamport",
    "Hamilton",
    "Wirth",
    "Dahl",
    "Perlman",
    "Goldwasser",
    "Berners-Lee",
    "Cerf",
];

const DEPARTMENTS: &[&str] = &[
    "Engineering",
    "Platform",
    "Security",
    "Sales",
    "Support",
    "Finance",
    "Research",
    "Operations",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(seed: u64) -> Spec {
        Spec {
            users: 200,
            groups: 5,
            members_per_group: 20,
            incremental: 30,
            seed,
        }
    }

    #[test]
    fn same_seed_gives_the_same_plan_and_another_seed_another() {
        assert_eq!(Plan::generate(spec(7)), Plan::generate(spec(7)));
        let other = Plan::generate(spec(8));
        assert_ne!(Plan::generate(spec(7)).users, other.users);
        assert_eq!(other.users[3].user_name, "user3-8@example.com");
        assert_eq!(other.groups[4].display_name, "group4-8");
    }

    #[test]
    fn users_do_not_depend_on_groups_or_the_incremental_cycle() {
        let a = Plan::generate(spec(7));
        let b = Plan::generate(Spec {
            groups: 50,
            incremental: 0,
            ..spec(7)
        });
        assert_eq!(a.users, b.users);
    }

    #[test]
    fn groups_hold_distinct_existing_members_around_the_average() {
        let plan = Plan::generate(Spec {
            groups: 200,
            ..spec(1)
        });
        for g in &plan.groups {
            let distinct: HashSet<_> = g.members.iter().collect();
            assert_eq!(distinct.len(), g.members.len());
            assert!(g.members.iter().all(|&u| u < 200));
            assert!((10..=30).contains(&g.members.len()), "{}", g.members.len());
        }
        let average = plan.memberships() as f64 / 200.0;
        assert!((18.0..=22.0).contains(&average), "{average}");
    }

    #[test]
    fn members_are_capped_by_the_number_of_users() {
        let plan = Plan::generate(Spec {
            users: 3,
            groups: 2,
            members_per_group: 100,
            incremental: 0,
            seed: 1,
        });
        for g in &plan.groups {
            assert!((1..=3).contains(&g.members.len()));
            assert!(g.members.iter().all(|&u| u < 3));
        }
    }

    #[test]
    fn incremental_cycle_splits_into_updates_deactivations_and_removals() {
        let plan = Plan::generate(spec(3));
        let count = |f: fn(&Change) -> bool| plan.changes.iter().filter(|c| f(c)).count();
        assert_eq!(count(|c| matches!(c, Change::UpdateUser { .. })), 16);
        assert_eq!(count(|c| matches!(c, Change::Deactivate { .. })), 7);
        assert_eq!(count(|c| matches!(c, Change::RemoveMember { .. })), 7);
        let mut touched = HashSet::new();
        let mut removed = HashSet::new();
        for c in &plan.changes {
            match c {
                Change::UpdateUser { user, .. } | Change::Deactivate { user } => {
                    assert!(touched.insert(*user), "user {user} changed twice");
                }
                Change::RemoveMember { group, user } => {
                    assert!(plan.groups[*group].members.contains(user));
                    assert!(removed.insert((*group, *user)), "removed twice");
                }
            }
        }
        let after: usize = (0..5).map(|g| plan.final_members(g).len()).sum();
        assert_eq!(after, plan.memberships() - 7);
    }

    #[test]
    fn tiny_tenants_get_what_fits() {
        let plan = Plan::generate(Spec {
            users: 2,
            groups: 0,
            members_per_group: 5,
            incremental: 40,
            seed: 9,
        });
        // 10 deactivations wanted but 2 users: both deactivated, no room
        // for updates, no memberships to remove.
        assert_eq!(plan.changes.len(), 2);
        assert_eq!(plan.deactivated().len(), 2);
        let empty = Plan::generate(Spec {
            users: 0,
            groups: 3,
            members_per_group: 5,
            incremental: 10,
            seed: 9,
        });
        assert!(empty.changes.is_empty());
        assert!(empty.groups.iter().all(|g| g.members.is_empty()));
    }

    #[test]
    fn sample_is_distinct_and_in_range() {
        let mut rng = Rng::new(5, 0);
        for (n, k) in [(10, 10), (10, 3), (1000, 999), (5, 9), (0, 4)] {
            let s = rng.sample(n, k);
            assert_eq!(s.len(), k.min(n));
            assert_eq!(s.iter().collect::<HashSet<_>>().len(), s.len());
            assert!(s.iter().all(|&v| v < n));
        }
    }

    #[test]
    fn filters_are_form_encoded_like_entra() {
        assert_eq!(
            eq_filter("userName", "user1-5@example.com"),
            "filter=userName+eq+%22user1-5%40example.com%22"
        );
        assert_eq!(
            eq_filter("displayName", "group0-5"),
            "filter=displayName+eq+%22group0-5%22"
        );
    }

    #[test]
    fn bodies_use_entras_default_dialect() {
        let plan = Plan::generate(spec(2));
        let user = create_user_body(&plan.users[0]);
        assert_eq!(user["schemas"][1], ENTERPRISE_SCHEMA);
        assert_eq!(user["emails"][0]["type"], "work");
        assert_eq!(user["emails"][0]["value"], "user0-2@example.com");
        assert_eq!(user["active"], true);
        let group = create_group_body(&plan.groups[0]);
        assert_eq!(group["schemas"][1], ADSCIM_GROUP_SCHEMA);
        assert!(group.get("members").is_none());
        assert_eq!(
            add_members_body(["a", "b"])["Operations"],
            json!([{"op": "Add", "path": "members", "value": [{"value": "a"}, {"value": "b"}]}])
        );
        assert_eq!(deactivate_body()["Operations"][0]["value"], "False");
        assert_eq!(
            remove_member_body("u1")["Operations"],
            json!([{"op": "Remove", "path": "members", "value": [{"value": "u1"}]}])
        );
        assert_eq!(
            update_user_body("A", "B", "C")["Operations"][2]["path"],
            format!("{ENTERPRISE_SCHEMA}:department")
        );
    }
}
