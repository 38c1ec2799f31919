//! The one sequence every request runs, written once: draft its audit event (who, what,
//! about which tenant and subject), ask the policy (`Check`), run the use case with the
//! grant it returned, add what the outcome says to the event, record the event, and only
//! then hand the result back. A refusal is recorded as denied, a failure with its outcome;
//! if the event cannot be made durable, the result is withheld (`AuditUnavailable`).
//!
//! A use case that changes data or keys (`Operation::is_write`) records its intent first,
//! and runs only once that is durable: no change is ever visible without its event, and
//! when the audit log cannot record, nothing is changed (`AuditUnavailable`). After the
//! change, its writes are flushed (`GroupCommit`) before its ending is recorded.
//!
//! Use cases build a `UseCase` with `Vault::use_case` and end it with `run` (a caller's
//! request), `run_system` / `run_job` (the vault's own jobs, which no policy rule covers),
//! `admit` (authorize here, record in the job that does the work) or `reject` (malformed
//! input, refused before any use case ran). `record` is private to this module: a use case
//! cannot record without the sequence, nor run without recording.

use std::future::Future;

use crate::audit::{EventDraft, Operation, Outcome};
use crate::authz::{Act, Grant};
use crate::domain::{Purpose, SubjectId, TenantId};

use super::audit::Noted;
use super::{Call, ServiceError, Vault};

/// What the policy is asked before a use case runs; `A` is the action's marker type
/// (`authz::act`), so the grant it yields is a `Grant<A>`.
#[derive(Clone, Copy, Debug)]
pub(super) enum Check<'a, A> {
    /// May the caller do `action` (in `tenant`, for `purpose`, where given)? Without a
    /// tenant, only a rule for all tenants grants it.
    Policy {
        action: A,
        tenant: Option<&'a TenantId>,
        purpose: Option<&'a Purpose>,
    },
    /// The policy alone, for a search whose results the use case then decides subject by
    /// subject (restriction, consent), so a purpose that needs consent is not refused here.
    Candidates {
        action: A,
        tenant: &'a TenantId,
        purpose: &'a Purpose,
    },
    /// `Policy` for an action on one subject's data: the subject's restriction and consents
    /// are decided in the same check.
    Subject {
        action: A,
        tenant: &'a TenantId,
        subject: &'a SubjectId,
        purpose: Option<&'a Purpose>,
    },
}

impl<'a, A: Act> Check<'a, A> {
    /// `Policy` without a purpose.
    pub(super) fn action(action: A, tenant: Option<&'a TenantId>) -> Self {
        Check::Policy {
            action,
            tenant,
            purpose: None,
        }
    }
}

/// For use cases whose event needs nothing from their outcome.
pub(super) fn no_detail<T>(_: &T, _: &mut EventDraft) {}

/// One request on its way through the sequence; holds its audit event until it is recorded.
#[must_use = "a use case records nothing until it is run"]
pub(super) struct UseCase<'v> {
    vault: &'v Vault,
    call: &'v Call,
    event: EventDraft,
    /// The sequence number of the change's recorded intent.
    intent: Option<u64>,
}

impl Vault {
    /// Starts the sequence for `call` doing `operation`: the event is drafted now (its time
    /// is the request's), not yet about any tenant or subject.
    pub(super) fn use_case<'v>(&'v self, call: &'v Call, operation: Operation) -> UseCase<'v> {
        UseCase {
            vault: self,
            call,
            event: EventDraft {
                time: self.clock.now(),
                request_id: call.request_id.clone(),
                caller: call.caller.as_str().to_owned(),
                operation,
                tenant: String::new(),
                subject: String::new(),
                fields: Vec::new(),
                purpose: String::new(),
                outcome: Outcome::Ok,
                reason: String::new(),
                rule: String::new(),
            },
            intent: None,
        }
    }
}

impl UseCase<'_> {
    /// The tenant the event is about.
    pub(super) fn tenant(mut self, tenant: impl ToString) -> Self {
        self.event.tenant = tenant.to_string();
        self
    }

    /// The subject the event is about.
    pub(super) fn subject(mut self, subject: impl ToString) -> Self {
        self.event.subject = subject.to_string();
        self
    }

    /// The purpose the request declared.
    pub(super) fn purpose(mut self, purpose: impl ToString) -> Self {
        self.event.purpose = purpose.to_string();
        self
    }

    /// The field names the request named (the outcome may replace them).
    pub(super) fn fields<S: ToString>(mut self, names: impl IntoIterator<Item = S>) -> Self {
        self.event.fields = names.into_iter().map(|n| n.to_string()).collect();
        self
    }

    /// A reason known before the use case runs (its outcome may replace it).
    pub(super) fn reason(mut self, reason: impl Into<String>) -> Self {
        self.event.reason = reason.into();
        self
    }

    /// Asks the policy; the deciding rule goes into the event.
    fn authorize<A: Act>(&mut self, check: Check<'_, A>) -> Result<Grant<A>, ServiceError> {
        let (vault, caller) = (self.vault, &self.call.caller);
        let grant = match check {
            Check::Policy {
                action,
                tenant,
                purpose,
            } => vault.authz.decide(caller, action, tenant, purpose)?,
            Check::Candidates {
                action,
                tenant,
                purpose,
            } => vault
                .authz
                .decide_rules(caller, action, Some(tenant), Some(purpose))?,
            Check::Subject {
                action,
                tenant,
                subject,
                purpose,
            } => {
                // The policy first: a caller it refuses learns nothing of the tenant's
                // existence (reading the state of an unknown tenant answers NOT_FOUND).
                let grant = vault
                    .authz
                    .decide_rules(caller, action, Some(tenant), purpose)?;
                let state = vault.checked_state(tenant, subject)?;
                vault.authz.subject_allows(&grant, purpose, &state)?;
                grant
            }
        };
        self.event.rule = grant.rule().to_owned();
        Ok(grant)
    }

    /// The whole sequence for a caller's request: authorize per `check`, run `body` with the
    /// grant, let `describe` add what a success says to the event (names read, a receipt),
    /// record, return.
    pub(super) async fn run<A: Act, T, Fut>(
        mut self, check: Check<'_, A>, body: impl FnOnce(Grant<A>) -> Fut,
        describe: impl FnOnce(&T, &mut EventDraft),
    ) -> Result<T, ServiceError>
    where
        Fut: Future<Output = Result<T, ServiceError>>,
    {
        let result = match self.authorize(check) {
            Ok(grant) => {
                self.intend().await?;
                body(grant).await
            }
            Err(refused) => Err(refused),
        };
        self.finish(result, describe).await
    }

    /// For a change: records its intent, and returns once it is durable. Nothing to do
    /// for a use case that changes nothing.
    async fn intend(&mut self) -> Result<(), ServiceError> {
        if !self.event.operation.is_write() {
            return Ok(());
        }
        #[cfg(feature = "testing")]
        if !self.vault.audit_enabled {
            return Ok(());
        }
        let seq = self
            .vault
            .audit
            .intend(self.event.clone())
            .await
            .map_err(ServiceError::AuditUnavailable)?;
        self.intent = Some(seq);
        Ok(())
    }

    /// Adds what a success says to the event, records it, returns the result.
    async fn finish<T>(
        mut self, result: Result<T, ServiceError>, describe: impl FnOnce(&T, &mut EventDraft),
    ) -> Result<T, ServiceError> {
        if let Ok(value) = &result {
            describe(value, &mut self.event);
        }
        self.record(result).await
    }

    /// The sequence for the vault's own jobs (retention sweep, audit prune, key jobs), which
    /// act as `job:` identities no certificate can carry and no policy rule may name:
    /// nothing to authorize, the rest as in `run`. (A key epoch asked for over the API is
    /// admitted first, `admit`, then recorded by the worker through this path.)
    pub(super) async fn run_system<T>(
        mut self, body: impl Future<Output = Result<T, ServiceError>>,
        describe: impl FnOnce(&T, &mut EventDraft),
    ) -> Result<T, ServiceError> {
        self.intend().await?;
        let result = body.await;
        self.finish(result, describe).await
    }

    /// `run_system` for a job step that may find nothing to do (`Ok(None)`). Such a step
    /// records no event, unless it changes data or keys: its intent was recorded before it
    /// could know, and its ending then says it found nothing.
    pub(super) async fn run_job<T>(
        mut self, body: impl Future<Output = Result<Option<T>, ServiceError>>,
        describe: impl FnOnce(&T, &mut EventDraft),
    ) -> Result<Option<T>, ServiceError> {
        self.intend().await?;
        match body.await {
            Ok(None) if self.intent.is_none() => Ok(None),
            done => {
                self.finish(done, |v, ev| match v {
                    Some(v) => describe(v, ev),
                    None => ev.reason = "nothing left to do".into(),
                })
                .await
            }
        }
    }

    /// Authorizes a request whose work (and its event) is done elsewhere, by a job that
    /// records it under its own use case: a refusal is recorded here; a grant is returned
    /// and this event is not recorded.
    pub(super) async fn admit<A: Act>(
        mut self, check: Check<'_, A>,
    ) -> Result<Grant<A>, ServiceError> {
        match self.authorize(check) {
            Ok(grant) => Ok(grant),
            Err(refused) => self.record(Err(refused)).await,
        }
    }

    /// Records a request refused before it reached a use case (malformed input), and
    /// returns the error to answer with.
    pub(super) async fn reject(self, error: ServiceError) -> ServiceError {
        match self.record::<()>(Err(error)).await {
            Err(e) => e,
            Ok(()) => ServiceError::Internal("a rejection was recorded as a success".into()),
        }
    }

    /// Records how the request ended, then hands back its result: only once the event is
    /// durable. If it cannot be recorded, the result is withheld and the call fails closed.
    async fn record<T>(self, mut result: Result<T, ServiceError>) -> Result<T, ServiceError> {
        let mut draft = self.event;
        #[cfg(feature = "testing")]
        if !self.vault.audit_enabled {
            // Benchmark baseline: no event, but writes are still flushed before success.
            if result.is_ok() && draft.operation.is_write() {
                self.vault.commit.durable().await?;
            }
            return result;
        }
        if result.is_ok() && self.intent.is_some() {
            // The change's writes are durable before its ending says it succeeded.
            if let Err(e) = self.vault.commit.durable().await {
                result = Err(e.into());
            }
        }
        if let Err(e) = &result {
            draft.outcome = e.outcome();
            draft.reason = e.audit_reason();
        }
        if draft.outcome == Outcome::Denied && !self.call.caller.is_job() {
            // Past its first few in a window, an identity's denials are counted, not
            // recorded one by one (`audit/denials.rs`).
            let (noted, closed) =
                self.vault
                    .denials
                    .note(&draft.caller, draft.operation, draft.time);
            self.vault.record_summaries(closed).await;
            if noted == Noted::Counted {
                return result;
            }
        }
        let recorded = match self.intent {
            Some(intent) => self.vault.audit.append_ending(draft, intent).await,
            None => self.vault.audit.append(draft).await,
        };
        match recorded {
            Ok(_) => result,
            Err(e) => Err(ServiceError::AuditUnavailable(e)),
        }
    }
}
