//! The audit event: who did what to whom, when, why, and how it ended. It has no place for
//! a field value: only names, ids and outcomes.

use std::fmt;

use crate::codec::{CodecError, Reader, Writer};
use crate::crypto::{Audit, Key, MAC_LEN};
use crate::domain::Timestamp;

/// An event of the single chain (the embedded store's; a shared store's before its nodes
/// kept chains of their own).
const EVENT_V1: u8 = 1;
/// An event of one node's chain in a log several nodes share: the node is in the content.
const EVENT_V2: u8 = 2;

/// What a request did. The name is what the log stores and queries filter on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operation {
    CreateTenant,
    GetTenant,
    ListTenants,
    PutFields,
    GetFields,
    DeleteFields,
    ListSubjects,
    QueryAudit,
    VerifyAudit,
    PruneAudit,
    EraseSubject,
    AccessSubject,
    ExportSubject,
    ReloadPolicy,
    FindSubjects,
    RotateIndexKey,
    Tokenize,
    Detokenize,
    RestrictSubject,
    LiftRestriction,
    SetConsent,
    ListConsents,
    RetentionDelete,
    Backup,
    RotateTenantKey,
    RotateRootKey,
    KeyStatus,
    KeyEpoch,
    ShredTenant,
    /// Denials of one identity counted in a window instead of recorded one by one.
    DenialsSummary,
    /// What the audit log found at a start: an unacknowledged torn tail it cut, or a
    /// change whose ending was never recorded (`Outcome::Intent` without its ending).
    AuditRecovery,
}

impl Operation {
    pub const ALL: [Operation; 31] = [
        Operation::CreateTenant,
        Operation::GetTenant,
        Operation::ListTenants,
        Operation::PutFields,
        Operation::GetFields,
        Operation::DeleteFields,
        Operation::ListSubjects,
        Operation::QueryAudit,
        Operation::VerifyAudit,
        Operation::PruneAudit,
        Operation::EraseSubject,
        Operation::AccessSubject,
        Operation::ExportSubject,
        Operation::ReloadPolicy,
        Operation::FindSubjects,
        Operation::RotateIndexKey,
        Operation::Tokenize,
        Operation::Detokenize,
        Operation::RestrictSubject,
        Operation::LiftRestriction,
        Operation::SetConsent,
        Operation::ListConsents,
        Operation::RetentionDelete,
        Operation::Backup,
        Operation::RotateTenantKey,
        Operation::RotateRootKey,
        Operation::KeyStatus,
        Operation::KeyEpoch,
        Operation::ShredTenant,
        Operation::DenialsSummary,
        Operation::AuditRecovery,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Operation::CreateTenant => "create_tenant",
            Operation::GetTenant => "get_tenant",
            Operation::ListTenants => "list_tenants",
            Operation::PutFields => "put_fields",
            Operation::GetFields => "get_fields",
            Operation::DeleteFields => "delete_fields",
            Operation::ListSubjects => "list_subjects",
            Operation::QueryAudit => "query_audit",
            Operation::VerifyAudit => "verify_audit",
            Operation::PruneAudit => "prune_audit",
            Operation::EraseSubject => "erase_subject",
            Operation::AccessSubject => "access_subject",
            Operation::ExportSubject => "export_subject",
            Operation::ReloadPolicy => "reload_policy",
            Operation::FindSubjects => "find_subjects",
            Operation::RotateIndexKey => "rotate_index_key",
            Operation::Tokenize => "tokenize",
            Operation::Detokenize => "detokenize",
            Operation::RestrictSubject => "restrict_subject",
            Operation::LiftRestriction => "lift_restriction",
            Operation::SetConsent => "set_consent",
            Operation::ListConsents => "list_consents",
            Operation::RetentionDelete => "retention_delete",
            Operation::Backup => "backup",
            Operation::RotateTenantKey => "rotate_tenant_key",
            Operation::RotateRootKey => "rotate_root_key",
            Operation::KeyStatus => "key_status",
            Operation::KeyEpoch => "key_epoch",
            Operation::ShredTenant => "shred_tenant",
            Operation::DenialsSummary => "denials_summary",
            Operation::AuditRecovery => "audit_recovery",
        }
    }

    /// True when the operation changes stored data or keys (and so must be flushed).
    pub fn is_write(self) -> bool {
        matches!(
            self,
            Operation::CreateTenant
                | Operation::PutFields
                | Operation::DeleteFields
                | Operation::PruneAudit
                | Operation::EraseSubject
                | Operation::RotateIndexKey
                | Operation::Tokenize
                | Operation::RestrictSubject
                | Operation::LiftRestriction
                | Operation::SetConsent
                | Operation::RetentionDelete
                | Operation::RotateTenantKey
                | Operation::RotateRootKey
                | Operation::KeyEpoch
                | Operation::ShredTenant
        )
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|op| op.name() == name)
    }
}

/// How a request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    Ok,
    /// Refused by policy, consent or restriction.
    Denied,
    NotFound,
    /// The request was malformed.
    Invalid,
    /// The vault failed (storage unavailable, internal error).
    Error,
    /// A change about to be made: recorded, and durable, before the change, so no change
    /// is ever visible without its event. The event of how it ended follows it; when the
    /// vault stops before that one is recorded, the next start records the ending as
    /// unknown (`Operation::AuditRecovery`).
    Intent,
}

impl Outcome {
    pub fn code(self) -> u8 {
        match self {
            Outcome::Ok => 1,
            Outcome::Denied => 2,
            Outcome::NotFound => 3,
            Outcome::Invalid => 4,
            Outcome::Error => 5,
            Outcome::Intent => 6,
        }
    }

    pub fn from_code(code: u8) -> Option<Self> {
        [
            Outcome::Ok,
            Outcome::Denied,
            Outcome::NotFound,
            Outcome::Invalid,
            Outcome::Error,
            Outcome::Intent,
        ]
        .into_iter()
        .find(|o| o.code() == code)
    }

    pub fn name(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Denied => "denied",
            Outcome::NotFound => "not_found",
            Outcome::Invalid => "invalid",
            Outcome::Error => "error",
            Outcome::Intent => "intent",
        }
    }
}

/// An event before the log gives it a sequence number and a MAC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventDraft {
    pub time: Timestamp,
    pub request_id: String,
    pub caller: String,
    pub operation: Operation,
    /// Empty when the request named no (valid) tenant.
    pub tenant: String,
    /// Empty when the request named no (valid) subject.
    pub subject: String,
    pub fields: Vec<String>,
    pub purpose: String,
    pub outcome: Outcome,
    /// Why the outcome: a denial's missing grant, an error class, a rectification's previous
    /// version. Never a value.
    pub reason: String,
    /// The policy rule that allowed the request; empty when none did.
    pub rule: String,
}

/// An event as stored: a draft with its place in the chain.
#[derive(Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// The event's place in the log (in a shared log, the order merged from every node).
    pub seq: u64,
    /// The chain the event belongs to: 0 for the single chain, else the node of a shared log
    /// that wrote it (each node links only its own events).
    pub node: u64,
    pub draft: EventDraft,
    /// MAC of the previous event of the same chain (all zero for a chain's first event).
    pub prev_mac: [u8; MAC_LEN],
    /// HMAC-SHA-256 under the audit key over this event's content and `prev_mac`.
    pub mac: [u8; MAC_LEN],
}

impl fmt::Debug for AuditEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditEvent")
            .field("seq", &self.seq)
            .field("node", &self.node)
            .field("draft", &self.draft)
            .finish_non_exhaustive()
    }
}

/// The label under which the audit key MACs events.
const MAC_LABEL: &str = "audit-event-v1";

fn content(seq: u64, node: u64, d: &EventDraft) -> Writer {
    let mut w = match node {
        0 => Writer::new().u8(EVENT_V1).u64(seq),
        node => Writer::new().u8(EVENT_V2).u64(seq).u64(node),
    };
    w = w
        .u64(d.time.0)
        .str(&d.request_id)
        .str(&d.caller)
        .str(d.operation.name())
        .str(&d.tenant)
        .str(&d.subject)
        .u32(u32::try_from(d.fields.len()).unwrap_or(u32::MAX));
    for f in &d.fields {
        w = w.str(f);
    }
    w.str(&d.purpose)
        .u8(d.outcome.code())
        .str(&d.reason)
        .str(&d.rule)
}

impl AuditEvent {
    /// Places `draft` after an event whose MAC is `prev_mac`, and MACs it.
    pub fn seal(key: &Key<Audit>, seq: u64, draft: EventDraft, prev_mac: [u8; MAC_LEN]) -> Self {
        Self::seal_on(key, 0, seq, draft, prev_mac)
    }

    /// Places `draft` at `seq` of a shared log, after the event of node `node`'s chain whose
    /// MAC is `prev_mac` (node 0: the single chain, as `seal`).
    pub fn seal_on(
        key: &Key<Audit>, node: u64, seq: u64, draft: EventDraft, prev_mac: [u8; MAC_LEN],
    ) -> Self {
        let body = content(seq, node, &draft).finish();
        let mac = key.mac(MAC_LABEL, &[&prev_mac, &body]);
        Self {
            seq,
            node,
            draft,
            prev_mac,
            mac,
        }
    }

    /// Recomputes the MAC: true when the event is exactly as it was sealed.
    pub fn mac_is_valid(&self, key: &Key<Audit>) -> bool {
        let body = content(self.seq, self.node, &self.draft).finish();
        crate::crypto::mac_eq(&key.mac(MAC_LABEL, &[&self.prev_mac, &body]), &self.mac)
    }

    /// The stored form: content, then the previous MAC and this MAC.
    pub fn encode(&self) -> Vec<u8> {
        content(self.seq, self.node, &self.draft)
            .bytes(&self.prev_mac)
            .bytes(&self.mac)
            .finish()
    }

    pub fn decode(buf: &[u8]) -> Result<Self, CodecError> {
        const WHAT: &str = "audit event";
        let bad = CodecError(WHAT);
        let mut r = Reader::new(buf, WHAT);
        let version = r.u8()?;
        let seq = r.u64()?;
        let node = match version {
            EVENT_V1 => 0,
            // Node 0 is the single chain: a node's event never names it.
            EVENT_V2 => Some(r.u64()?).filter(|n| *n != 0).ok_or(bad)?,
            _ => return Err(bad),
        };
        let time = Timestamp(r.u64()?);
        let request_id = r.str()?.to_owned();
        let caller = r.str()?.to_owned();
        let operation = Operation::from_name(r.str()?).ok_or(bad)?;
        let tenant = r.str()?.to_owned();
        let subject = r.str()?.to_owned();
        let count = r.u32()?;
        let mut fields = Vec::new();
        for _ in 0..count {
            fields.push(r.str()?.to_owned());
        }
        let purpose = r.str()?.to_owned();
        let outcome = Outcome::from_code(r.u8()?).ok_or(bad)?;
        let reason = r.str()?.to_owned();
        let rule = r.str()?.to_owned();
        let mac_of = |b: &[u8]| <[u8; MAC_LEN]>::try_from(b).map_err(|_| bad);
        let prev_mac = mac_of(r.bytes()?)?;
        let mac = mac_of(r.bytes()?)?;
        r.finish()?;
        Ok(Self {
            seq,
            node,
            draft: EventDraft {
                time,
                request_id,
                caller,
                operation,
                tenant,
                subject,
                fields,
                purpose,
                outcome,
                reason,
                rule,
            },
            prev_mac,
            mac,
        })
    }
}
