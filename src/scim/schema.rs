//! The resource schemas scimsync stores and returns (RFC 7643 §4, §7):
//! User, the enterprise User extension and Group, as static attribute tables.
//!
//! Everything else in `crate::scim` asks this module what an attribute is
//! (its type, whether it is multi-valued, case-exact, read-only) instead of
//! hard-coding names, so one table drives validation, PATCH, filtering and
//! the `/Schemas` discovery document.

use serde_json::{Map, Value, json};

use crate::scim::filter::AttrPath;

/// Core User schema URI (RFC 7643 §4.1).
pub const USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
/// Core Group schema URI (RFC 7643 §4.2).
pub const GROUP_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
/// Enterprise User extension URI (RFC 7643 §4.3).
pub const ENTERPRISE_USER_SCHEMA: &str =
    "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
/// ListResponse message URI (RFC 7644 §3.4.2).
pub const LIST_RESPONSE_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:ListResponse";
/// PATCH request message URI (RFC 7644 §3.5.2).
pub const PATCH_OP_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
/// `POST .search` request message URI (RFC 7644 §3.4.3).
pub const SEARCH_REQUEST_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:SearchRequest";
/// Schema resource URI, used in the `/Schemas` discovery document (RFC 7643 §7).
pub const SCHEMA_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:Schema";

/// The two resource types scimsync serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum ResourceKind {
    /// `/Users`: people, with the enterprise extension.
    User,
    /// `/Groups`: Entra groups, which become teams.
    Group,
}

impl ResourceKind {
    /// The resource type name, as in `meta.resourceType` ("User", "Group").
    pub fn name(self) -> &'static str {
        match self {
            ResourceKind::User => "User",
            ResourceKind::Group => "Group",
        }
    }

    /// The core schema of this resource type.
    pub fn core_schema(self) -> &'static SchemaDef {
        match self {
            ResourceKind::User => &USER_SCHEMA_DEF,
            ResourceKind::Group => &GROUP_SCHEMA_DEF,
        }
    }

    /// The schema extensions this resource type supports.
    pub fn extensions(self) -> &'static [&'static SchemaDef] {
        match self {
            ResourceKind::User => &USER_EXTENSIONS,
            ResourceKind::Group => &[],
        }
    }
}

/// An attribute's data type (RFC 7643 §2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttrType {
    /// Unicode text.
    String,
    /// `true` / `false`.
    Boolean,
    /// A real number.
    Decimal,
    /// A whole number.
    Integer,
    /// An xsd:dateTime string, e.g. `2015-10-10T14:38:21Z`.
    DateTime,
    /// A URI or resource reference, carried as a string.
    Reference,
    /// Base64 data, carried as a string.
    Binary,
    /// An object made of sub-attributes.
    Complex,
}

impl AttrType {
    /// The type name used in schema documents.
    pub fn as_str(self) -> &'static str {
        match self {
            AttrType::String => "string",
            AttrType::Boolean => "boolean",
            AttrType::Decimal => "decimal",
            AttrType::Integer => "integer",
            AttrType::DateTime => "dateTime",
            AttrType::Reference => "reference",
            AttrType::Binary => "binary",
            AttrType::Complex => "complex",
        }
    }

    /// True for the types whose JSON form is a string.
    pub fn is_string_like(self) -> bool {
        matches!(
            self,
            AttrType::String | AttrType::DateTime | AttrType::Reference | AttrType::Binary
        )
    }
}

/// Whether and when a client may change an attribute (RFC 7643 §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutability {
    /// Set by the server only; client values are ignored on POST/PUT and
    /// rejected by PATCH.
    ReadOnly,
    /// Freely writable.
    ReadWrite,
    /// Set once, never changed.
    Immutable,
    /// Writable but never returned (passwords).
    WriteOnly,
}

impl Mutability {
    /// The keyword used in schema documents.
    pub fn as_str(self) -> &'static str {
        match self {
            Mutability::ReadOnly => "readOnly",
            Mutability::ReadWrite => "readWrite",
            Mutability::Immutable => "immutable",
            Mutability::WriteOnly => "writeOnly",
        }
    }
}

/// When an attribute is included in responses (RFC 7643 §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Returned {
    /// Always, even when `attributes=` does not name it.
    Always,
    /// Never.
    Never,
    /// Unless excluded.
    Default,
    /// Only when asked for.
    Request,
}

impl Returned {
    /// The keyword used in schema documents.
    pub fn as_str(self) -> &'static str {
        match self {
            Returned::Always => "always",
            Returned::Never => "never",
            Returned::Default => "default",
            Returned::Request => "request",
        }
    }
}

/// The uniqueness an attribute's value must have (RFC 7643 §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uniqueness {
    /// No constraint.
    None,
    /// Unique within the service provider's tenant.
    Server,
    /// Globally unique.
    Global,
}

impl Uniqueness {
    /// The keyword used in schema documents.
    pub fn as_str(self) -> &'static str {
        match self {
            Uniqueness::None => "none",
            Uniqueness::Server => "server",
            Uniqueness::Global => "global",
        }
    }
}

/// One attribute definition with its RFC 7643 §7 characteristics.
#[derive(Debug, PartialEq, Eq)]
pub struct AttributeDef {
    /// Name as the schema spells it (stored resources use this spelling).
    pub name: &'static str,
    /// Data type.
    pub ty: AttrType,
    /// Whether the value is a JSON array.
    pub multi_valued: bool,
    /// Human-readable description for the discovery document.
    pub description: &'static str,
    /// Whether a resource must carry the attribute.
    pub required: bool,
    /// Whether string comparisons on it are case-sensitive.
    pub case_exact: bool,
    /// Who may change it.
    pub mutability: Mutability,
    /// When responses include it.
    pub returned: Returned,
    /// Uniqueness constraint.
    pub uniqueness: Uniqueness,
    /// Sub-attributes of a complex attribute (empty otherwise).
    pub sub_attributes: &'static [AttributeDef],
    /// Suggested values (e.g. "work", "home" for `type`).
    pub canonical_values: &'static [&'static str],
    /// What a reference may point to ("User", "Group", "external", "uri").
    pub reference_types: &'static [&'static str],
    /// Whether the store keeps the value in an index, which bounds its
    /// length (see `resource::MAX_INDEXED_BYTES`).
    pub indexed: bool,
}

// Const builders keep the tables below readable: each attribute line states
// only how it differs from the RFC 7643 §2.2 defaults.
const fn attr(name: &'static str, ty: AttrType, description: &'static str) -> AttributeDef {
    AttributeDef {
        name,
        ty,
        multi_valued: false,
        description,
        required: false,
        case_exact: false,
        mutability: Mutability::ReadWrite,
        returned: Returned::Default,
        uniqueness: Uniqueness::None,
        sub_attributes: &[],
        canonical_values: &[],
        reference_types: &[],
        indexed: false,
    }
}

const fn string(name: &'static str, description: &'static str) -> AttributeDef {
    attr(name, AttrType::String, description)
}

const fn complex(
    name: &'static str,
    description: &'static str,
    subs: &'static [AttributeDef],
) -> AttributeDef {
    let mut a = attr(name, AttrType::Complex, description);
    a.sub_attributes = subs;
    a
}

impl AttributeDef {
    const fn multi(mut self) -> Self {
        self.multi_valued = true;
        self
    }
    const fn required(mut self) -> Self {
        self.required = true;
        self
    }
    const fn case_exact(mut self) -> Self {
        self.case_exact = true;
        self
    }
    const fn read_only(mut self) -> Self {
        self.mutability = Mutability::ReadOnly;
        self
    }
    const fn immutable(mut self) -> Self {
        self.mutability = Mutability::Immutable;
        self
    }
    const fn returned_always(mut self) -> Self {
        self.returned = Returned::Always;
        self
    }
    const fn unique_server(mut self) -> Self {
        self.uniqueness = Uniqueness::Server;
        self
    }
    const fn canonical(mut self, values: &'static [&'static str]) -> Self {
        self.canonical_values = values;
        self
    }
    const fn refs(mut self, types: &'static [&'static str]) -> Self {
        self.reference_types = types;
        self
    }
    const fn indexed(mut self) -> Self {
        self.indexed = true;
        self
    }

    /// True when the attribute is complex.
    pub fn is_complex(&self) -> bool {
        self.ty == AttrType::Complex
    }

    /// True when clients may not write the attribute.
    pub fn is_read_only(&self) -> bool {
        self.mutability == Mutability::ReadOnly
    }
}

/// A schema: its URI, name and attribute table.
#[derive(Debug, PartialEq, Eq)]
pub struct SchemaDef {
    /// The schema URI, e.g. [`USER_SCHEMA`].
    pub id: &'static str,
    /// Short name ("User").
    pub name: &'static str,
    /// Human-readable description ("User Account").
    pub description: &'static str,
    /// Top-level attributes.
    pub attributes: &'static [AttributeDef],
}

impl SchemaDef {
    /// Finds a top-level attribute of this schema, ignoring case.
    pub fn attribute(&self, name: &str) -> Option<&'static AttributeDef> {
        self.attributes
            .iter()
            .find(|a| a.name.eq_ignore_ascii_case(name))
    }
}

const PLURAL_TYPES_EMAIL: &[&str] = &["work", "home", "other"];
const PLURAL_TYPES_PHONE: &[&str] = &["work", "home", "mobile", "fax", "pager", "other"];
const PLURAL_TYPES_IM: &[&str] = &["aim", "gtalk", "icq", "xmpp", "msn", "skype", "qq", "yahoo"];
const PLURAL_TYPES_PHOTO: &[&str] = &["photo", "thumbnail"];

static NAME_SUBS: [AttributeDef; 6] = [
    string("formatted", "The full name, formatted for display."),
    string("familyName", "The family (last) name."),
    string("givenName", "The given (first) name."),
    string("middleName", "The middle name(s)."),
    string(
        "honorificPrefix",
        "Honorific prefix(es), e.g. 'Ms.' in 'Ms. Barbara J Jensen, III'.",
    ),
    string(
        "honorificSuffix",
        "Honorific suffix(es), e.g. 'III' in 'Ms. Barbara J Jensen, III'.",
    ),
];

static EMAIL_SUBS: [AttributeDef; 4] = [
    string("value", "The email address.").required().indexed(),
    string("display", "A label for display purposes."),
    string("type", "The kind of address, e.g. 'work' or 'home'.").canonical(PLURAL_TYPES_EMAIL),
    attr(
        "primary",
        AttrType::Boolean,
        "Whether this is the preferred address.",
    ),
];

static PHONE_SUBS: [AttributeDef; 4] = [
    string("value", "The phone number, as sent."),
    string("display", "A label for display purposes."),
    string("type", "The kind of number, e.g. 'work' or 'mobile'.").canonical(PLURAL_TYPES_PHONE),
    attr(
        "primary",
        AttrType::Boolean,
        "Whether this is the preferred number.",
    ),
];

static IM_SUBS: [AttributeDef; 4] = [
    string("value", "The instant messaging address."),
    string("display", "A label for display purposes."),
    string("type", "The messaging service, e.g. 'xmpp'.").canonical(PLURAL_TYPES_IM),
    attr(
        "primary",
        AttrType::Boolean,
        "Whether this is the preferred address.",
    ),
];

static PHOTO_SUBS: [AttributeDef; 4] = [
    attr("value", AttrType::Reference, "The URL of the image.").refs(&["external"]),
    string("display", "A label for display purposes."),
    string("type", "'photo' or 'thumbnail'.").canonical(PLURAL_TYPES_PHOTO),
    attr(
        "primary",
        AttrType::Boolean,
        "Whether this is the preferred photo.",
    ),
];

static ADDRESS_SUBS: [AttributeDef; 8] = [
    string(
        "formatted",
        "The full postal address, formatted for display.",
    ),
    string("streetAddress", "Street, house number and the like."),
    string("locality", "City or locality."),
    string("region", "State or region."),
    string("postalCode", "Postal or zip code."),
    string("country", "Country, as an ISO 3166-1 alpha-2 code."),
    string("type", "The kind of address, e.g. 'work' or 'home'.")
        .canonical(&["work", "home", "other"]),
    attr(
        "primary",
        AttrType::Boolean,
        "Whether this is the preferred address.",
    ),
];

static GENERIC_PLURAL_SUBS: [AttributeDef; 4] = [
    string("value", "The value."),
    string("display", "A label for display purposes."),
    string("type", "A label saying what the value is for."),
    attr(
        "primary",
        AttrType::Boolean,
        "Whether this is the preferred value.",
    ),
];

static CERT_SUBS: [AttributeDef; 4] = [
    // Binary is case exact (RFC 7643 §2.3.6); the schema listing of §8.7.1
    // says false here, which erratum 6000 reports as a mistake.
    attr(
        "value",
        AttrType::Binary,
        "The DER certificate, base64-encoded.",
    )
    .case_exact(),
    string("display", "A label for display purposes."),
    string("type", "A label saying what the certificate is for."),
    attr(
        "primary",
        AttrType::Boolean,
        "Whether this is the preferred certificate.",
    ),
];

static USER_GROUP_SUBS: [AttributeDef; 4] = [
    // Group and manager values hold a resource's case-exact "id" (RFC 7643
    // §3.1), as members do.
    string("value", "The id of the group.")
        .case_exact()
        .read_only(),
    attr("$ref", AttrType::Reference, "The URI of the group.")
        .refs(&["User", "Group"])
        .read_only(),
    string("display", "The group's displayName.").read_only(),
    string("type", "'direct' or 'indirect' membership.")
        .canonical(&["direct", "indirect"])
        .read_only(),
];

static USER_ATTRIBUTES: [AttributeDef; 22] = [
    string(
        "id",
        "The service provider's unique identifier of the resource.",
    )
    .case_exact()
    .read_only()
    .returned_always()
    .unique_server(),
    string(
        "externalId",
        "The client's identifier of the resource (Entra's objectId or mailNickname).",
    )
    .case_exact()
    .indexed(),
    string(
        "userName",
        "The unique login name of the user; compared case-insensitively.",
    )
    .required()
    .unique_server()
    .indexed(),
    complex("name", "The components of the user's name.", &NAME_SUBS),
    string("displayName", "The name shown for the user.").indexed(),
    string("nickName", "The casual name of the user."),
    attr(
        "profileUrl",
        AttrType::Reference,
        "A URL of the user's online profile.",
    )
    .refs(&["external"]),
    string("title", "The user's job title."),
    string(
        "userType",
        "The relationship to the organization, e.g. 'Employee'.",
    ),
    string(
        "preferredLanguage",
        "Preferred written or spoken language, e.g. 'en-US'.",
    ),
    string(
        "locale",
        "Locale for localizing dates, numbers and currency, e.g. 'en-US'.",
    ),
    string(
        "timezone",
        "Time zone in IANA format, e.g. 'America/Los_Angeles'.",
    ),
    attr(
        "active",
        AttrType::Boolean,
        "Whether the user may use the product; false when Entra disables the user.",
    ),
    // Published as required because scimsync invites every user by email:
    // a user needs one (or a userName that is an address; see
    // resource::require_email). Not enforced by the schema walk itself.
    complex("emails", "Email addresses of the user.", &EMAIL_SUBS)
        .multi()
        .required(),
    complex("phoneNumbers", "Phone numbers of the user.", &PHONE_SUBS).multi(),
    complex("ims", "Instant messaging addresses of the user.", &IM_SUBS).multi(),
    complex("photos", "URLs of photos of the user.", &PHOTO_SUBS).multi(),
    complex(
        "addresses",
        "Physical mailing addresses of the user.",
        &ADDRESS_SUBS,
    )
    .multi(),
    complex(
        "groups",
        "The groups the user belongs to, maintained by the service.",
        &USER_GROUP_SUBS,
    )
    .multi()
    .read_only(),
    complex("roles", "Roles of the user.", &GENERIC_PLURAL_SUBS).multi(),
    complex(
        "entitlements",
        "Entitlements of the user.",
        &GENERIC_PLURAL_SUBS,
    )
    .multi(),
    complex(
        "x509Certificates",
        "X.509 certificates of the user.",
        &CERT_SUBS,
    )
    .multi(),
];

static MANAGER_SUBS: [AttributeDef; 3] = [
    string("value", "The id of the manager's User resource.").case_exact(),
    attr(
        "$ref",
        AttrType::Reference,
        "The URI of the manager's User resource.",
    )
    .refs(&["User"]),
    string("displayName", "The manager's displayName.").read_only(),
];

static ENTERPRISE_ATTRIBUTES: [AttributeDef; 6] = [
    string("employeeNumber", "Identifier assigned by the organization."),
    string("costCenter", "Name of a cost center."),
    string("organization", "Name of an organization."),
    string("division", "Name of a division."),
    string("department", "Name of a department."),
    complex("manager", "The user's manager.", &MANAGER_SUBS),
];

static MEMBER_SUBS: [AttributeDef; 4] = [
    // It holds a resource's "id" (RFC 7643 §4.2), which is case exact
    // (§3.1), and the membership table compares it exactly.
    string("value", "The id of the member's User resource.")
        .case_exact()
        .immutable(),
    attr("$ref", AttrType::Reference, "The URI of the member.")
        .refs(&["User", "Group"])
        .immutable(),
    string("display", "The member's display name.").read_only(),
    string("type", "The kind of member: 'User' or 'Group'.")
        .canonical(&["User", "Group"])
        .immutable(),
];

static GROUP_ATTRIBUTES: [AttributeDef; 4] = [
    string(
        "id",
        "The service provider's unique identifier of the resource.",
    )
    .case_exact()
    .read_only()
    .returned_always()
    .unique_server(),
    string(
        "externalId",
        "The client's identifier of the group (Entra's objectId).",
    )
    .case_exact()
    .indexed(),
    // Entra ID requires unique group names although SCIM does not.
    string(
        "displayName",
        "The group's name; unique, compared case-insensitively.",
    )
    .required()
    .unique_server()
    .indexed(),
    complex("members", "The members of the group.", &MEMBER_SUBS).multi(),
];

static META_SUBS: [AttributeDef; 5] = [
    string("resourceType", "The resource type, 'User' or 'Group'.")
        .case_exact()
        .read_only(),
    attr(
        "created",
        AttrType::DateTime,
        "When the resource was created.",
    )
    .read_only(),
    attr(
        "lastModified",
        AttrType::DateTime,
        "When the resource was last changed.",
    )
    .read_only(),
    attr("location", AttrType::Reference, "The URI of the resource.")
        .refs(&["uri"])
        .read_only(),
    string("version", "The version (ETag) of the resource.")
        .case_exact()
        .read_only(),
];

/// The common `meta` attribute (RFC 7643 §3.1), present on every resource
/// and filterable (`meta.lastModified gt ...`), but not part of any schema
/// document.
pub static META_ATTRIBUTE: AttributeDef = complex(
    "meta",
    "Resource metadata maintained by the service.",
    &META_SUBS,
)
.read_only();

static USER_EXTENSIONS: [&SchemaDef; 1] = [&ENTERPRISE_USER_SCHEMA_DEF];

/// The core User schema.
pub static USER_SCHEMA_DEF: SchemaDef = SchemaDef {
    id: USER_SCHEMA,
    name: "User",
    description: "User Account",
    attributes: &USER_ATTRIBUTES,
};

/// The enterprise User extension schema.
pub static ENTERPRISE_USER_SCHEMA_DEF: SchemaDef = SchemaDef {
    id: ENTERPRISE_USER_SCHEMA,
    name: "EnterpriseUser",
    description: "Enterprise User",
    attributes: &ENTERPRISE_ATTRIBUTES,
};

/// The core Group schema.
pub static GROUP_SCHEMA_DEF: SchemaDef = SchemaDef {
    id: GROUP_SCHEMA,
    name: "Group",
    description: "Group",
    attributes: &GROUP_ATTRIBUTES,
};

/// Where an attribute path led: the schema that defines the attribute, the
/// attribute, and the sub-attribute when the path names one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResolvedAttr {
    /// The schema defining `attr`; for extensions the resource stores the
    /// attribute inside an object under this schema's URI.
    pub schema: &'static SchemaDef,
    /// The top-level attribute.
    pub attr: &'static AttributeDef,
    /// The sub-attribute, when the path had `.sub`.
    pub sub: Option<&'static AttributeDef>,
}

impl ResolvedAttr {
    /// True when the attribute lives in a schema extension object rather than
    /// at the top level of the resource.
    pub fn in_extension(&self) -> bool {
        self.schema.id != USER_SCHEMA && self.schema.id != GROUP_SCHEMA
    }

    /// The definition the path finally names (the sub-attribute if any).
    pub fn leaf(&self) -> &'static AttributeDef {
        self.sub.unwrap_or(self.attr)
    }
}

fn core_attribute(kind: ResourceKind, name: &str) -> Option<&'static AttributeDef> {
    if META_ATTRIBUTE.name.eq_ignore_ascii_case(name) {
        return Some(&META_ATTRIBUTE);
    }
    kind.core_schema().attribute(name)
}

/// Resolves an attribute path (`userName`, `name.givenName`,
/// `urn:...:enterprise:2.0:User:manager`) against the schemas of `kind`.
///
/// Names compare case-insensitively. A path without a URN is looked up in
/// the core schema first and then in the extensions, because Entra's legacy
/// filters say `manager eq ...` for the enterprise manager. Returns `None`
/// for unknown attributes, unknown URNs, and a `.sub` on a non-complex
/// attribute.
pub fn resolve_attribute(kind: ResourceKind, path: &AttrPath) -> Option<ResolvedAttr> {
    let core = kind.core_schema();
    let found = match &path.urn {
        Some(urn) if urn.eq_ignore_ascii_case(core.id) => {
            core_attribute(kind, &path.name).map(|a| (core, a))
        }
        Some(urn) => kind
            .extensions()
            .iter()
            .find(|s| s.id.eq_ignore_ascii_case(urn))
            .and_then(|s| s.attribute(&path.name).map(|a| (*s, a))),
        None => core_attribute(kind, &path.name)
            .map(|a| (core, a))
            .or_else(|| {
                kind.extensions()
                    .iter()
                    .find_map(|s| s.attribute(&path.name).map(|a| (*s, a)))
            }),
    };
    let (schema, attr) = found?;
    let sub = match &path.sub {
        Some(name) => Some(find_sub_attribute(attr, name)?),
        None => None,
    };
    Some(ResolvedAttr { schema, attr, sub })
}

/// Finds the definition an attribute path names: the sub-attribute for
/// `name.givenName`, the attribute itself otherwise. See
/// [`resolve_attribute`] for the lookup rules.
pub fn find_attribute(kind: ResourceKind, path: &AttrPath) -> Option<&'static AttributeDef> {
    resolve_attribute(kind, path).map(|r| r.leaf())
}

/// Finds a sub-attribute of a complex attribute, ignoring case.
pub fn find_sub_attribute(parent: &AttributeDef, name: &str) -> Option<&'static AttributeDef> {
    // `parent` may be a borrowed copy, but every AttributeDef lives in the
    // static tables, so its sub-attribute slice is 'static either way.
    let subs: &'static [AttributeDef] = parent.sub_attributes;
    subs.iter().find(|a| a.name.eq_ignore_ascii_case(name))
}

/// Finds the schema (core or extension) whose URI is `urn`, ignoring case.
pub fn schema_by_urn(kind: ResourceKind, urn: &str) -> Option<&'static SchemaDef> {
    let core = kind.core_schema();
    if core.id.eq_ignore_ascii_case(urn) {
        return Some(core);
    }
    kind.extensions()
        .iter()
        .copied()
        .find(|s| s.id.eq_ignore_ascii_case(urn))
}

/// When a path spells a whole schema URI (`urn:...:enterprise:2.0:User`,
/// which the grammar reads as URN `urn:...:2.0` plus attribute `User`),
/// returns that schema. PATCH uses this for operations on a whole extension.
pub fn path_names_schema(kind: ResourceKind, path: &AttrPath) -> Option<&'static SchemaDef> {
    if path.sub.is_some() {
        return None;
    }
    let urn = path.urn.as_deref()?;
    let core = kind.core_schema();
    kind.extensions()
        .iter()
        .copied()
        .chain(std::iter::once(core))
        .find(|s| {
            // Compare "<urn>:<name>" against the schema id without allocating.
            s.id.len() == urn.len() + 1 + path.name.len()
                && s.id
                    .get(..urn.len())
                    .is_some_and(|p| p.eq_ignore_ascii_case(urn))
                && s.id.get(urn.len()..urn.len() + 1) == Some(":")
                && s.id
                    .get(urn.len() + 1..)
                    .is_some_and(|n| n.eq_ignore_ascii_case(&path.name))
        })
}

fn attribute_json(a: &AttributeDef) -> Value {
    let mut m = Map::new();
    m.insert("name".into(), json!(a.name));
    m.insert("type".into(), json!(a.ty.as_str()));
    m.insert("multiValued".into(), json!(a.multi_valued));
    m.insert("description".into(), json!(a.description));
    m.insert("required".into(), json!(a.required));
    if a.ty != AttrType::Complex && a.ty != AttrType::Boolean {
        m.insert("caseExact".into(), json!(a.case_exact));
    }
    m.insert("mutability".into(), json!(a.mutability.as_str()));
    m.insert("returned".into(), json!(a.returned.as_str()));
    m.insert("uniqueness".into(), json!(a.uniqueness.as_str()));
    if !a.canonical_values.is_empty() {
        m.insert("canonicalValues".into(), json!(a.canonical_values));
    }
    if !a.reference_types.is_empty() {
        m.insert("referenceTypes".into(), json!(a.reference_types));
    }
    if a.ty == AttrType::Complex {
        let subs: Vec<Value> = a.sub_attributes.iter().map(attribute_json).collect();
        m.insert("subAttributes".into(), Value::Array(subs));
    }
    Value::Object(m)
}

/// One RFC 7643 §7 Schema resource.
pub fn schema_json(schema: &SchemaDef) -> Value {
    let attributes: Vec<Value> = schema.attributes.iter().map(attribute_json).collect();
    // `meta.location` needs the public base URL, which only the HTTP layer
    // knows; it may add it. Omitted rather than null (Entra wants no nulls).
    json!({
        "schemas": [SCHEMA_SCHEMA],
        "id": schema.id,
        "name": schema.name,
        "description": schema.description,
        "attributes": attributes,
        "meta": { "resourceType": "Schema" }
    })
}

/// The Schema resources served at `/Schemas`: User, enterprise User, Group.
pub fn schemas_json() -> Vec<Value> {
    [
        &USER_SCHEMA_DEF,
        &ENTERPRISE_USER_SCHEMA_DEF,
        &GROUP_SCHEMA_DEF,
    ]
    .into_iter()
    .map(schema_json)
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(s: &str) -> AttrPath {
        crate::scim::filter::parse_attr_path(s).unwrap()
    }

    #[test]
    fn user_name_is_required_unique_and_case_insensitive() {
        let a = find_attribute(ResourceKind::User, &path("userName")).unwrap();
        assert!(a.required);
        assert!(!a.case_exact);
        assert_eq!(a.uniqueness, Uniqueness::Server);
    }

    #[test]
    fn external_id_and_id_are_case_exact() {
        for kind in [ResourceKind::User, ResourceKind::Group] {
            assert!(
                find_attribute(kind, &path("externalId"))
                    .unwrap()
                    .case_exact
            );
            let id = find_attribute(kind, &path("id")).unwrap();
            assert!(id.case_exact);
            assert!(id.is_read_only());
            assert_eq!(id.returned, Returned::Always);
        }
    }

    #[test]
    fn lookup_ignores_case_and_accepts_urn_qualified_names() {
        let a = find_attribute(ResourceKind::User, &path("USERNAME")).unwrap();
        assert_eq!(a.name, "userName");
        let a = find_attribute(
            ResourceKind::User,
            &path("urn:ietf:params:scim:schemas:core:2.0:User:userName"),
        )
        .unwrap();
        assert_eq!(a.name, "userName");
        let r = resolve_attribute(
            ResourceKind::User,
            &path("urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber"),
        )
        .unwrap();
        assert_eq!(r.attr.name, "employeeNumber");
        assert!(r.in_extension());
    }

    #[test]
    fn sub_attribute_lookup_returns_the_sub_definition() {
        let a = find_attribute(ResourceKind::User, &path("name.FamilyName")).unwrap();
        assert_eq!(a.name, "familyName");
        let a = find_attribute(ResourceKind::User, &path("emails.primary")).unwrap();
        assert_eq!(a.ty, AttrType::Boolean);
        assert!(find_attribute(ResourceKind::User, &path("userName.x")).is_none());
    }

    #[test]
    fn unqualified_manager_falls_back_to_the_enterprise_extension() {
        let r = resolve_attribute(ResourceKind::User, &path("manager")).unwrap();
        assert_eq!(r.schema.id, ENTERPRISE_USER_SCHEMA);
    }

    #[test]
    fn group_has_no_enterprise_attributes_and_unknown_urns_resolve_to_nothing() {
        assert!(find_attribute(ResourceKind::Group, &path("manager")).is_none());
        assert!(find_attribute(ResourceKind::User, &path("urn:x:y:userName")).is_none());
        assert!(find_attribute(ResourceKind::User, &path("doesNotExist")).is_none());
    }

    #[test]
    fn meta_timestamps_are_filterable_attributes() {
        let a = find_attribute(ResourceKind::User, &path("meta.lastModified")).unwrap();
        assert_eq!(a.ty, AttrType::DateTime);
        let a = find_attribute(ResourceKind::Group, &path("meta.created")).unwrap();
        assert_eq!(a.ty, AttrType::DateTime);
    }

    #[test]
    fn members_value_is_immutable_and_display_read_only() {
        let members = find_attribute(ResourceKind::Group, &path("members")).unwrap();
        assert_eq!(
            find_sub_attribute(members, "value").unwrap().mutability,
            Mutability::Immutable
        );
        assert!(
            find_sub_attribute(members, "display")
                .unwrap()
                .is_read_only()
        );
    }

    #[test]
    fn whole_extension_urn_is_recognised_as_a_schema_path() {
        let p = path("urn:ietf:params:scim:schemas:extension:enterprise:2.0:User");
        let s = path_names_schema(ResourceKind::User, &p).unwrap();
        assert_eq!(s.id, ENTERPRISE_USER_SCHEMA);
        assert!(path_names_schema(ResourceKind::User, &path("userName")).is_none());
    }

    fn contains_null(v: &Value) -> bool {
        match v {
            Value::Null => true,
            Value::Array(a) => a.iter().any(contains_null),
            Value::Object(o) => o.values().any(contains_null),
            _ => false,
        }
    }

    #[test]
    fn schemas_document_lists_three_schemas_without_nulls() {
        let docs = schemas_json();
        assert_eq!(docs.len(), 3);
        for d in &docs {
            assert!(!contains_null(d));
            assert_eq!(d["meta"]["resourceType"], "Schema");
            assert_eq!(d["schemas"][0], SCHEMA_SCHEMA);
        }
        assert_eq!(docs[0]["description"], "User Account");
        let user_attrs = docs[0]["attributes"].as_array().unwrap();
        let emails = user_attrs.iter().find(|a| a["name"] == "emails").unwrap();
        assert_eq!(emails["multiValued"], true);
        assert_eq!(emails["type"], "complex");
        assert!(emails["subAttributes"].as_array().unwrap().len() == 4);
        assert!(user_attrs.iter().any(|a| a["name"] == "x509Certificates"));
        let group_attrs = docs[2]["attributes"].as_array().unwrap();
        let dn = group_attrs
            .iter()
            .find(|a| a["name"] == "displayName")
            .unwrap();
        assert_eq!(dn["uniqueness"], "server");
        assert_eq!(dn["required"], true);
    }

    #[test]
    fn schema_document_attributes_use_camel_case_keywords() {
        let docs = schemas_json();
        let ent = docs[1]["attributes"].as_array().unwrap();
        let manager = ent.iter().find(|a| a["name"] == "manager").unwrap();
        let display = manager["subAttributes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == "displayName")
            .unwrap();
        assert_eq!(display["mutability"], "readOnly");
        let r = manager["subAttributes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == "$ref")
            .unwrap();
        assert_eq!(r["referenceTypes"], json!(["User"]));
    }
}
