//! The job that carries one SCIM write from ingest to a worker.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::scim::ResourceKind;

/// One validated SCIM write. Its `change_id` is also the queue's task id
/// and the provisioning log's key, so a redelivery is recognised.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScimChange {
    pub change_id: String,
    pub org_id: String,
    /// `…/scim/v2`, for `meta.location` in the stored answer.
    pub base_url: String,
    pub received_at: DateTime<Utc>,
    pub op: ChangeOp,
}

/// What the change does. Ids of new resources are chosen at ingest, so a
/// redelivered create makes the same resource.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ChangeOp {
    Create {
        kind: ResourceKind,
        id: String,
        resource: Value,
    },
    Replace {
        kind: ResourceKind,
        id: String,
        resource: Value,
        if_match: Option<String>,
    },
    Patch {
        kind: ResourceKind,
        id: String,
        body: Value,
        if_match: Option<String>,
    },
    Delete {
        kind: ResourceKind,
        id: String,
        if_match: Option<String>,
    },
}

impl ChangeOp {
    pub fn kind(&self) -> ResourceKind {
        match self {
            ChangeOp::Create { kind, .. }
            | ChangeOp::Replace { kind, .. }
            | ChangeOp::Patch { kind, .. }
            | ChangeOp::Delete { kind, .. } => *kind,
        }
    }

    pub fn id(&self) -> &str {
        match self {
            ChangeOp::Create { id, .. }
            | ChangeOp::Replace { id, .. }
            | ChangeOp::Patch { id, .. }
            | ChangeOp::Delete { id, .. } => id,
        }
    }

    /// The operation's name in logs and the provisioning log.
    pub fn name(&self) -> &'static str {
        match self {
            ChangeOp::Create { .. } => "create",
            ChangeOp::Replace { .. } => "replace",
            ChangeOp::Patch { .. } => "patch",
            ChangeOp::Delete { .. } => "delete",
        }
    }
}

impl ScimChange {
    pub fn new(org_id: &str, base_url: &str, op: ChangeOp) -> Self {
        ScimChange {
            change_id: ulid::Ulid::new().to_string(),
            org_id: org_id.to_owned(),
            base_url: base_url.to_owned(),
            received_at: Utc::now(),
            op,
        }
    }
}

impl super::queue::Job for ScimChange {
    fn job_id(&self) -> String {
        self.change_id.clone()
    }
}
