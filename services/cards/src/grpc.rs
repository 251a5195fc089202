//! The tonic implementations of the cards contracts: `CardsService` (the owner's RPCs and the
//! charge RPCs) and `CardsAdminService`. Handlers authorise first, parse the request (answering
//! `VALIDATION_FAILED` with every field violation), then call `saga`, `storage` or the vault.
//!
//! Another user's card answers `NOT_FOUND` exactly like a missing one: lookups filter by owner in
//! SQL, so both take the same path.
//!
//! Not built (they answer `UNIMPLEMENTED`, the generated default): credit lines and card statements
//! (`GetCreditLine`, `ListCardStatements`, `GetCardStatement`): only debit cards exist.

use bank_auth::{Subject, principal};
use bank_money::card_number;
use bank_platform::{
    ErrorCode, FieldViolation, ServiceError,
    grpc::fields::{self, answer, internal, invalid, refused},
    idempotency, outbox,
    pagination::Page,
};
use bank_proto::{
    cards::v1::{cards_admin_service_server::CardsAdminService, cards_service_server::CardsService, *},
    common::v1::{Money, PageInfo},
    events::v1 as events,
};
use prost::Message as _;
use sqlx::PgConnection;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::{
    convert::{self, MaxLimits},
    domain::{self, Change, Cvv, Expiry, Pan, Refusal, Status as CardState},
    saga::{self, Authorize, Core, MerchantIn, Operation, card_not_found, into_service_error},
    storage::{self, AuthStatus, CardFilter, CardRow},
    tx,
    upstream::Failure,
    vault,
};

type Answer<T> = Result<Response<T>, Status>;

use crate::rpcs::{
    AUTHORIZE, CAPTURE, CLOSE, FORCE_CLOSE, FREEZE, ISSUE, REFUND, REPLACE, REPORT_LOST, SET_LIMITS,
    UNFREEZE, VOID,
};

/// Page token kinds.
const CARDS_PAGE: &str = "cards";
const CHARGES_PAGE: &str = "charges";
const DECLINES_PAGE: &str = "declines";

/// The cards API (owner, charge and administrative RPCs).
#[derive(Debug, Clone)]
pub(crate) struct Api {
    core: Core,
}

impl Api {
    pub(crate) const fn new(core: Core) -> Self {
        Self { core }
    }

    fn max(&self) -> MaxLimits {
        MaxLimits {
            daily: self.core.settings.max_daily_limit,
            per_transaction: self.core.settings.max_per_transaction_limit,
        }
    }

    fn card(&self, row: &CardRow) -> Card {
        convert::card(row, self.max())
    }
}

/// A positive amount with a three-letter currency.
fn money_field(field: &str, value: Option<&Money>) -> Result<(String, i64), Status> {
    let Some(money) = value else {
        return Err(invalid(field, "REQUIRED", "is required"));
    };
    if money.currency.len() != 3 || !money.currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(invalid(&format!("{field}.currency"), "INVALID_FORMAT", "an ISO 4217 code"));
    }
    if money.minor_units <= 0 {
        return Err(invalid(&format!("{field}.minor_units"), "NOT_POSITIVE", "must be positive"));
    }
    Ok((money.currency.clone(), money.minor_units))
}

/// The caller's own bearer token (passed on to accounts and identity, which decide ownership).
fn bearer_of<T>(request: &Request<T>) -> Result<String, Status> {
    request
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim().to_owned())
        .ok_or_else(|| refused(ErrorCode::Unauthenticated, "a bearer token is required"))
}

/// Who calls a charge RPC: a service with `cards:authorize` (any card), or the card owner when
/// `cards.allow_owner_charges` is on (their cards only). Answers the key principal and the owner
/// filter.
fn charger<T>(request: &Request<T>, allow_owner: bool) -> Result<(String, Option<Uuid>), Status> {
    let principal = principal(request)?;
    match &principal.subject {
        Subject::Service(client) if principal.has("cards:authorize") => Ok((client.clone(), None)),
        Subject::User(user) if allow_owner => Ok((user.to_string(), Some(*user))),
        Subject::Service(_) | Subject::User(_) => Err(refused(ErrorCode::PermissionDenied, "not allowed")),
    }
}

/// Who reads charges: a service with `cards:authorize` (any card) or the owner (their cards).
fn reader<T>(request: &Request<T>) -> Result<Option<Uuid>, Status> {
    let principal = principal(request)?;
    match &principal.subject {
        Subject::Service(_) if principal.has("cards:authorize") => Ok(None),
        Subject::User(user) => Ok(Some(*user)),
        Subject::Service(_) => Err(refused(ErrorCode::PermissionDenied, "not allowed")),
    }
}

/// A reason of an administrative action (card numbers masked to their last four).
fn reason_field(value: &str) -> Result<String, Status> {
    let value = value.trim();
    if value.is_empty() {
        return Err(invalid("reason", "REQUIRED", "is required"));
    }
    if value.chars().count() > 500 || value.chars().any(char::is_control) {
        return Err(invalid("reason", "INVALID", "at most 500 characters, no control characters"));
    }
    Ok(card_number::mask_card_numbers(value).into_owned())
}

fn refusal(refusal: Refusal) -> ServiceError {
    let code = match refusal {
        Refusal::Lost => ErrorCode::CardLost,
        Refusal::Closed => ErrorCode::CardClosed,
        Refusal::Expired => ErrorCode::CardExpired,
    };
    ServiceError::new(code, refusal.to_string())
}

/// Requested limits, checked against the product maximum and the card's currency; unset fields
/// keep `current`.
fn limits(
    requested: Option<&CardLimits>,
    currency: &str,
    current: (i64, i64),
    max: MaxLimits,
) -> Result<(i64, i64), Status> {
    let Some(requested) = requested else { return Ok(current) };
    let mut out = current;
    for (field, value, slot, maximum) in [
        ("limits.daily_limit", requested.daily_limit.as_ref(), &mut out.0, max.daily),
        (
            "limits.per_transaction_limit",
            requested.per_transaction_limit.as_ref(),
            &mut out.1,
            max.per_transaction,
        ),
    ] {
        let Some(value) = value else { continue };
        let (value_currency, amount) = money_field(field, Some(value))?;
        if value_currency != currency {
            return Err(refused(ErrorCode::CurrencyMismatch, "limits are in the card's currency"));
        }
        if amount > maximum {
            return Err(refused(ErrorCode::LimitAboveProductMaximum, "above the product's maximum"));
        }
        *slot = amount;
    }
    Ok(out)
}

/// Checks the account a card is issued on (or replaced on): the caller's, checking, usable.
fn usable_account(account: &bank_proto::accounts::v1::Account) -> Result<(), Status> {
    use bank_proto::accounts::v1::{AccountProduct, AccountStatus};
    if account.product != AccountProduct::Checking as i32 {
        return Err(refused(ErrorCode::FailedPrecondition, "debit cards are issued on checking accounts"));
    }
    match AccountStatus::try_from(account.status) {
        Ok(AccountStatus::Active) => Ok(()),
        Ok(AccountStatus::Frozen) => Err(refused(ErrorCode::AccountFrozen, "the account is frozen")),
        Ok(AccountStatus::Closed) => Err(refused(ErrorCode::AccountClosed, "the account is closed")),
        Ok(AccountStatus::Pending | AccountStatus::Unspecified) | Err(_) => {
            Err(refused(ErrorCode::AccountNotReady, "the account is not open yet"))
        }
    }
}

fn upstream_error(failure: Failure) -> Status {
    failure.into_client_error("a service cards depends on is unreachable; retry shortly").into()
}

/// What a new card is made of (issuance and replacement).
struct Issue<'a> {
    owner: Uuid,
    account_id: Uuid,
    currency: &'a str,
    cardholder_name: &'a str,
    time_zone: &'a str,
    daily_limit: i64,
    per_transaction_limit: i64,
    replaces: Option<Uuid>,
}

/// Generates a PAN (unique in the vault), seals it, inserts the card and its `CardIssued` event.
async fn issue(
    conn: &mut PgConnection,
    vault: &vault::Vault,
    settings: &crate::config::CardsConfig,
    new: &Issue<'_>,
) -> Result<(CardRow, Pan), tx::Error> {
    let card_id = Uuid::now_v7();
    let mut attempts = 0;
    let pan = loop {
        let pan = Pan::generate(&settings.bin, settings.pan_length);
        match vault.seal(conn, card_id, &pan).await {
            Ok(()) => break pan,
            Err(vault::Error::Duplicate) if attempts < 10 => attempts += 1,
            Err(vault::Error::Database(db)) => return Err(db.into()),
            Err(err) => return Err(ServiceError::internal(&err).into()),
        }
    };
    let expiry = Expiry::after(time::OffsetDateTime::now_utc(), settings.validity_years);
    let row = storage::insert_card(
        conn,
        &storage::NewCard {
            card_id,
            owner_user_id: new.owner,
            account_id: new.account_id,
            last_four: pan.last_four(),
            expiry,
            cardholder_name: new.cardholder_name,
            currency: new.currency,
            daily_limit: new.daily_limit,
            per_transaction_limit: new.per_transaction_limit,
            time_zone: new.time_zone,
            replaces_card_id: new.replaces,
        },
    )
    .await?;
    outbox::publish(
        conn,
        &format!("cards/{card_id}"),
        &events::CardIssued {
            card_id: card_id.to_string(),
            account_id: new.account_id.to_string(),
            owner_user_id: new.owner.to_string(),
            last_four: row.last_four.clone(),
            product: CardProduct::Debit as i32,
            replaces_card_id: new.replaces.map(|id| id.to_string()).unwrap_or_default(),
        },
    )
    .await?;
    metrics::counter!("cards_issued_total").increment(1);
    Ok((row, pan))
}

/// The status event of a change.
async fn publish_change(
    conn: &mut PgConnection,
    row: &CardRow,
    change: Change,
    stolen: bool,
    closed_by_admin: Option<Uuid>,
) -> Result<(), sqlx::Error> {
    let subject = format!("cards/{}", row.card_id);
    let (card_id, owner, last_four) =
        (row.card_id.to_string(), row.owner_user_id.to_string(), row.last_four.clone());
    match change {
        Change::Freeze => {
            outbox::publish(conn, &subject, &events::CardFrozen { card_id, owner_user_id: owner, last_four })
                .await?;
        }
        Change::Unfreeze => {
            outbox::publish(
                conn,
                &subject,
                &events::CardUnfrozen { card_id, owner_user_id: owner, last_four },
            )
            .await?;
        }
        Change::ReportLost => {
            outbox::publish(
                conn,
                &subject,
                &events::CardReportedLost { card_id, owner_user_id: owner, last_four, stolen },
            )
            .await?;
        }
        Change::Close => {
            let closed_by_admin = closed_by_admin.map(|id| id.to_string()).unwrap_or_default();
            outbox::publish(
                conn,
                &subject,
                &events::CardClosed { card_id, owner_user_id: owner, last_four, closed_by_admin },
            )
            .await?;
        }
    }
    Ok(())
}

impl Api {
    /// A status change of a card by its owner (or, with `admin`, by staff), in one transaction with
    /// the key, its event and the stored response.
    #[allow(clippy::too_many_arguments)]
    async fn change(
        &self,
        card_id: Uuid,
        owner: Option<Uuid>,
        key: Option<idempotency::Key>,
        request_hash: Vec<u8>,
        change: Change,
        stolen: bool,
        admin: Option<(Uuid, String)>,
    ) -> Result<(Card, bool), Status> {
        let max = self.max();
        tx::run(&self.core.pool, |conn| {
            let key = key.clone();
            let request_hash = request_hash.clone();
            let admin = admin.clone();
            Box::pin(async move {
                if !storage::lock_card(conn, card_id, owner).await? {
                    return Err(card_not_found().into());
                }
                if let Some(key) = &key
                    && let idempotency::Begin::Replay(bytes) =
                        idempotency::begin(conn, key, &request_hash).await?
                {
                    return Ok((Card::decode(bytes.as_slice()).map_err(saga::decode_error)?, true));
                }
                let row = storage::card(conn, card_id, None).await?.ok_or(sqlx::Error::RowNotFound)?;
                let row = match domain::apply(row.effective_status(), change).map_err(refusal)? {
                    None => row,
                    Some(status) => {
                        let closed_by = admin.as_ref().map(|(actor, _)| *actor);
                        let row = storage::set_status(conn, card_id, status, stolen, closed_by).await?;
                        publish_change(conn, &row, change, stolen, closed_by).await?;
                        if let Some((actor, reason)) = &admin {
                            storage::insert_admin_action(
                                conn,
                                *actor,
                                "force_close",
                                &card_id.to_string(),
                                reason,
                            )
                            .await?;
                        }
                        row
                    }
                };
                let card = convert::card(&row, max);
                if let Some(key) = &key {
                    idempotency::complete(conn, key, &card.encode_to_vec()).await?;
                }
                Ok((card, false))
            })
        })
        .await
        .map_err(Status::from)
    }

    async fn owned_card(&self, card_id: Uuid, owner: Option<Uuid>) -> Result<CardRow, Status> {
        let mut conn = self.core.pool.acquire().await.map_err(internal)?;
        storage::card(&mut conn, card_id, owner)
            .await
            .map_err(internal)?
            .ok_or_else(|| card_not_found().into())
    }
}

#[tonic::async_trait]
impl CardsService for Api {
    async fn issue_card(&self, request: Request<IssueCardRequest>) -> Answer<IssueCardResponse> {
        let owner = bank_auth::require_user(&request)?;
        let bearer = bearer_of(&request)?;
        let key = fields::optional_key(&request, &owner.to_string(), ISSUE)?;
        let req = request.into_inner();
        let request_hash = idempotency::request_hash(&req.encode_to_vec());
        let account_id = fields::uuid("account_id", &req.account_id)?;
        let name = req.cardholder_name.trim();
        if name.chars().count() > 26 || name.chars().any(char::is_control) {
            return Err(invalid("cardholder_name", "INVALID", "at most 26 characters"));
        }
        let name = card_number::mask_card_numbers(name).into_owned();
        let account = self.core.upstreams.account(&bearer, account_id).await.map_err(upstream_error)?;
        let (daily, per_transaction) = limits(
            req.limits.as_ref(),
            &account.currency,
            (self.core.settings.default_daily_limit, self.core.settings.default_per_transaction_limit),
            self.max(),
        )?;
        usable_account(&account)?;
        let profile = self.core.upstreams.profile(&bearer).await.map_err(upstream_error)?;
        let name = if name.is_empty() {
            format!("{} {}", profile.given_name.trim(), profile.family_name.trim())
                .trim()
                .chars()
                .take(26)
                .collect()
        } else {
            name
        };
        let settings = self.core.settings.clone();
        let vault = self.core.vault.clone();
        let max = self.max();
        let (response, secrets) = tx::run(&self.core.pool, |conn| {
            let key = key.clone();
            let request_hash = request_hash.clone();
            let settings = settings.clone();
            let vault = vault.clone();
            let (currency, name, wanted_zone) =
                (account.currency.clone(), name.clone(), profile.time_zone.clone());
            Box::pin(async move {
                if let Some(key) = &key
                    && let idempotency::Begin::Replay(bytes) =
                        idempotency::begin(conn, key, &request_hash).await?
                {
                    return Ok((
                        IssueCardResponse::decode(bytes.as_slice()).map_err(saga::decode_error)?,
                        None,
                    ));
                }
                let time_zone =
                    if !wanted_zone.is_empty() && storage::time_zone_exists(conn, &wanted_zone).await? {
                        wanted_zone
                    } else {
                        settings.default_time_zone.clone()
                    };
                let new = Issue {
                    owner,
                    account_id,
                    currency: &currency,
                    cardholder_name: &name,
                    time_zone: &time_zone,
                    daily_limit: daily,
                    per_transaction_limit: per_transaction,
                    replaces: None,
                };
                let (row, pan) = issue(conn, &vault, &settings, &new).await?;
                // The stored response never holds the secrets: a replay answers the card only.
                let stored = IssueCardResponse {
                    card: Some(convert::card(&row, max)),
                    ..IssueCardResponse::default()
                };
                if let Some(key) = &key {
                    idempotency::complete(conn, key, &stored.encode_to_vec()).await?;
                }
                Ok((stored, Some(pan)))
            })
        })
        .await?;
        let replayed = secrets.is_none();
        let response = match secrets {
            Some(pan) => IssueCardResponse {
                pan: pan.expose().to_owned(),
                cvv: Cvv::generate().expose().to_owned(),
                ..response
            },
            None => response,
        };
        Ok(answer(response, replayed))
    }

    async fn list_cards(&self, request: Request<ListCardsRequest>) -> Answer<ListCardsResponse> {
        let owner = bank_auth::require_user(&request)?;
        let req = request.into_inner();
        let page_request = req.page.unwrap_or_default();
        let page = Page::parse(page_request.page_size, &page_request.page_token, CARDS_PAGE, 50, 200)?;
        let filter = CardFilter {
            owner: Some(owner),
            account: fields::optional_uuid("account_id", &req.account_id)?,
            statuses: (!req.include_inactive).then(|| vec!["active", "frozen"]),
            expired: (!req.include_inactive).then_some(false),
            ..CardFilter::default()
        };
        let rows = {
            let mut conn = self.core.pool.acquire().await.map_err(internal)?;
            storage::cards(&mut conn, &filter, page.position, page.size).await.map_err(internal)?
        };
        let next_page_token = page.next_token(CARDS_PAGE, rows.len(), rows.last().map_or(0, |r| r.seq));
        Ok(Response::new(ListCardsResponse {
            cards: rows.iter().map(|r| self.card(r)).collect(),
            page_info: Some(PageInfo { next_page_token, total_size: None }),
        }))
    }

    async fn get_card(&self, request: Request<GetCardRequest>) -> Answer<GetCardResponse> {
        let owner = bank_auth::require_user(&request)?;
        let card_id = fields::uuid("card_id", &request.get_ref().card_id)?;
        let row = self.owned_card(card_id, Some(owner)).await?;
        Ok(Response::new(GetCardResponse { card: Some(self.card(&row)) }))
    }

    async fn freeze_card(&self, request: Request<FreezeCardRequest>) -> Answer<FreezeCardResponse> {
        let owner = bank_auth::require_user(&request)?;
        let key = fields::optional_key(&request, &owner.to_string(), FREEZE)?;
        let req = request.into_inner();
        let card_id = fields::uuid("card_id", &req.card_id)?;
        let hash = idempotency::request_hash(&req.encode_to_vec());
        let (card, replayed) =
            self.change(card_id, Some(owner), key, hash, Change::Freeze, false, None).await?;
        Ok(answer(FreezeCardResponse { card: Some(card) }, replayed))
    }

    async fn unfreeze_card(&self, request: Request<UnfreezeCardRequest>) -> Answer<UnfreezeCardResponse> {
        let owner = bank_auth::require_user(&request)?;
        let key = fields::optional_key(&request, &owner.to_string(), UNFREEZE)?;
        let req = request.into_inner();
        let card_id = fields::uuid("card_id", &req.card_id)?;
        let hash = idempotency::request_hash(&req.encode_to_vec());
        let (card, replayed) =
            self.change(card_id, Some(owner), key, hash, Change::Unfreeze, false, None).await?;
        Ok(answer(UnfreezeCardResponse { card: Some(card) }, replayed))
    }

    async fn report_card_lost(
        &self,
        request: Request<ReportCardLostRequest>,
    ) -> Answer<ReportCardLostResponse> {
        let owner = bank_auth::require_user(&request)?;
        let key = fields::optional_key(&request, &owner.to_string(), REPORT_LOST)?;
        let req = request.into_inner();
        let card_id = fields::uuid("card_id", &req.card_id)?;
        let hash = idempotency::request_hash(&req.encode_to_vec());
        let (card, replayed) =
            self.change(card_id, Some(owner), key, hash, Change::ReportLost, req.stolen, None).await?;
        Ok(answer(ReportCardLostResponse { card: Some(card) }, replayed))
    }

    async fn replace_card(&self, request: Request<ReplaceCardRequest>) -> Answer<ReplaceCardResponse> {
        let owner = bank_auth::require_user(&request)?;
        let bearer = bearer_of(&request)?;
        let key = fields::optional_key(&request, &owner.to_string(), REPLACE)?;
        let req = request.into_inner();
        let request_hash = idempotency::request_hash(&req.encode_to_vec());
        let card_id = fields::uuid("card_id", &req.card_id)?;
        let old = self.owned_card(card_id, Some(owner)).await?;
        let account = self.core.upstreams.account(&bearer, old.account_id).await.map_err(upstream_error)?;
        usable_account(&account)?;
        let settings = self.core.settings.clone();
        let vault = self.core.vault.clone();
        let max = self.max();
        let (response, secrets) = tx::run(&self.core.pool, |conn| {
            let key = key.clone();
            let request_hash = request_hash.clone();
            let settings = settings.clone();
            let vault = vault.clone();
            Box::pin(async move {
                if !storage::lock_card(conn, card_id, Some(owner)).await? {
                    return Err(card_not_found().into());
                }
                if let Some(key) = &key
                    && let idempotency::Begin::Replay(bytes) =
                        idempotency::begin(conn, key, &request_hash).await?
                {
                    return Ok((
                        ReplaceCardResponse::decode(bytes.as_slice()).map_err(saga::decode_error)?,
                        None,
                    ));
                }
                let old = storage::card(conn, card_id, None).await?.ok_or(sqlx::Error::RowNotFound)?;
                if old.replaced_by_card_id.is_some() {
                    return Err(
                        ServiceError::new(ErrorCode::CardClosed, "the card was already replaced").into()
                    );
                }
                let new = Issue {
                    owner,
                    account_id: old.account_id,
                    currency: &old.currency,
                    cardholder_name: &old.cardholder_name,
                    time_zone: &old.time_zone,
                    daily_limit: old.daily_limit,
                    per_transaction_limit: old.per_transaction_limit,
                    replaces: Some(card_id),
                };
                let (row, pan) = issue(conn, &vault, &settings, &new).await?;
                storage::set_replaced_by(conn, card_id, row.card_id).await?;
                if matches!(old.status, CardState::Active | CardState::Frozen) {
                    let closed = storage::set_status(conn, card_id, CardState::Closed, false, None).await?;
                    publish_change(conn, &closed, Change::Close, false, None).await?;
                }
                let stored = ReplaceCardResponse {
                    card: Some(convert::card(&row, max)),
                    ..ReplaceCardResponse::default()
                };
                if let Some(key) = &key {
                    idempotency::complete(conn, key, &stored.encode_to_vec()).await?;
                }
                Ok((stored, Some(pan)))
            })
        })
        .await?;
        let replayed = secrets.is_none();
        let response = match secrets {
            Some(pan) => ReplaceCardResponse {
                pan: pan.expose().to_owned(),
                cvv: Cvv::generate().expose().to_owned(),
                ..response
            },
            None => response,
        };
        Ok(answer(response, replayed))
    }

    async fn set_card_limits(&self, request: Request<SetCardLimitsRequest>) -> Answer<SetCardLimitsResponse> {
        let owner = bank_auth::require_user(&request)?;
        let key = fields::optional_key(&request, &owner.to_string(), SET_LIMITS)?;
        let req = request.into_inner();
        let request_hash = idempotency::request_hash(&req.encode_to_vec());
        let card_id = fields::uuid("card_id", &req.card_id)?;
        if req.limits.is_none() {
            return Err(invalid("limits", "REQUIRED", "is required"));
        }
        let max = self.max();
        let (card, replayed) = tx::run(&self.core.pool, |conn| {
            let key = key.clone();
            let request_hash = request_hash.clone();
            let requested = req.limits.clone();
            Box::pin(async move {
                if !storage::lock_card(conn, card_id, Some(owner)).await? {
                    return Err(card_not_found().into());
                }
                if let Some(key) = &key
                    && let idempotency::Begin::Replay(bytes) =
                        idempotency::begin(conn, key, &request_hash).await?
                {
                    return Ok((Card::decode(bytes.as_slice()).map_err(saga::decode_error)?, true));
                }
                let row = storage::card(conn, card_id, None).await?.ok_or(sqlx::Error::RowNotFound)?;
                let (daily, per_transaction) = limits(
                    requested.as_ref(),
                    &row.currency,
                    (row.daily_limit, row.per_transaction_limit),
                    max,
                )
                .map_err(|status| {
                    tx::Error::Refused(ServiceError::new(
                        bank_platform::error::reason_of(&status).unwrap_or(ErrorCode::ValidationFailed),
                        status.message(),
                    ))
                })?;
                let row = storage::set_limits(conn, card_id, daily, per_transaction).await?;
                let card = convert::card(&row, max);
                if let Some(key) = &key {
                    idempotency::complete(conn, key, &card.encode_to_vec()).await?;
                }
                Ok((card, false))
            })
        })
        .await?;
        Ok(answer(SetCardLimitsResponse { card: Some(card) }, replayed))
    }

    async fn close_card(&self, request: Request<CloseCardRequest>) -> Answer<CloseCardResponse> {
        let owner = bank_auth::require_user(&request)?;
        let key = fields::optional_key(&request, &owner.to_string(), CLOSE)?;
        let req = request.into_inner();
        let card_id = fields::uuid("card_id", &req.card_id)?;
        let hash = idempotency::request_hash(&req.encode_to_vec());
        let (card, replayed) =
            self.change(card_id, Some(owner), key, hash, Change::Close, false, None).await?;
        Ok(answer(CloseCardResponse { card: Some(card) }, replayed))
    }

    async fn reveal_card_pan(&self, request: Request<RevealCardPanRequest>) -> Answer<RevealCardPanResponse> {
        let principal = principal(&request)?.clone();
        let owner = bank_auth::require_user(&request)?;
        let bearer = bearer_of(&request)?;
        let text = |name: &str| {
            request.metadata().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned).unwrap_or_default()
        };
        let ip_address =
            text("x-forwarded-for").split(',').next().map(str::trim).unwrap_or_default().to_owned();
        let ip_address = if ip_address.parse::<std::net::IpAddr>().is_ok() {
            ip_address
        } else {
            request.remote_addr().map(|a| a.ip().to_string()).unwrap_or_default()
        };
        let user_agent: String = text("user-agent").chars().take(256).collect();
        let card_id = fields::uuid("card_id", &request.get_ref().card_id)?;
        let row = self.owned_card(card_id, Some(owner)).await?;
        match row.status {
            CardState::Closed => return Err(refused(ErrorCode::CardClosed, "the card is closed")),
            CardState::Lost => return Err(refused(ErrorCode::CardLost, "the card was reported lost")),
            CardState::Active | CardState::Frozen | CardState::Expired => {}
        }
        // Step-up when the owner has a second factor (identity's own rule for sensitive actions).
        let profile = self.core.upstreams.profile(&bearer).await.map_err(upstream_error)?;
        if profile.mfa_enabled {
            bank_auth::require_step_up_of_enrolled(&principal)?;
        }
        let vault = self.core.vault.clone();
        let limit = i64::from(self.core.settings.reveals_per_hour);
        let pan = tx::run(&self.core.pool, |conn| {
            let vault = vault.clone();
            let (ip_address, user_agent) = (ip_address.clone(), user_agent.clone());
            let last_four = row.last_four.clone();
            Box::pin(async move {
                if !storage::lock_card(conn, card_id, Some(owner)).await? {
                    return Err(card_not_found().into());
                }
                if storage::recent_reveals(conn, owner).await? >= limit {
                    return Err(ServiceError::new(
                        ErrorCode::RateLimited,
                        "too many PAN reveals; try again later",
                    )
                    .into());
                }
                storage::insert_reveal(conn, card_id, owner, &ip_address, &user_agent).await?;
                outbox::publish(
                    conn,
                    &format!("cards/{card_id}"),
                    &events::CardPanRevealed {
                        card_id: card_id.to_string(),
                        owner_user_id: owner.to_string(),
                        last_four,
                        ip_address,
                        user_agent,
                    },
                )
                .await?;
                match vault.reveal(conn, card_id).await {
                    Ok(pan) => Ok(pan),
                    Err(vault::Error::Database(db)) => Err(db.into()),
                    Err(err) => Err(ServiceError::internal(&err).into()),
                }
            })
        })
        .await?;
        metrics::counter!("cards_pan_reveals_total").increment(1);
        tracing::info!(%card_id, "PAN revealed to the card owner");
        Ok(Response::new(RevealCardPanResponse {
            pan: pan.expose().to_owned(),
            expiry_month: row.expiry_month,
            expiry_year: row.expiry_year,
        }))
    }

    async fn authorize_charge(
        &self,
        request: Request<AuthorizeChargeRequest>,
    ) -> Answer<AuthorizeChargeResponse> {
        let (principal, owner) = charger(&request, self.core.settings.allow_owner_charges)?;
        let key = fields::required_key(&request, &principal, AUTHORIZE)?;
        let req = request.into_inner();
        let request_hash = idempotency::request_hash(&req.encode_to_vec());
        let card_id = fields::uuid("card_id", &req.card_id)?;
        let mut violations = Vec::new();
        let merchant = req.merchant.unwrap_or_default();
        // Free text from the acquirer: a card number in it is masked to its last four; in an
        // identifier masking would change what it names, so the charge is refused instead.
        let name = card_number::masked(merchant.name.trim().to_owned());
        if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
            violations.push(FieldViolation::new("merchant.name", "INVALID", "1 to 100 characters"));
        }
        if merchant.category_code.len() != 4 || !merchant.category_code.bytes().all(|b| b.is_ascii_digit()) {
            violations.push(FieldViolation::new(
                "merchant.category_code",
                "INVALID_FORMAT",
                "four digits (ISO 18245)",
            ));
        }
        for (field, value, max) in [
            ("merchant.merchant_id", &merchant.merchant_id, 64),
            ("merchant.city", &merchant.city, 64),
            ("merchant.country", &merchant.country, 2),
            ("acquirer_reference", &req.acquirer_reference, 128),
        ] {
            if value.chars().count() > max || value.chars().any(char::is_control) {
                violations.push(FieldViolation::new(field, "INVALID", format!("at most {max} characters")));
            }
        }
        for (field, value) in
            [("merchant.merchant_id", &merchant.merchant_id), ("acquirer_reference", &req.acquirer_reference)]
        {
            if card_number::contains_card_number(value) {
                violations.push(FieldViolation::new(
                    field,
                    card_number::VIOLATION_CODE,
                    "must not contain a card number",
                ));
            }
        }
        let amount = money_field("amount", req.amount.as_ref()).map_err(|s| {
            let v = FieldViolation::new("amount", "INVALID", s.message());
            violations.push(v);
        });
        let Ok((currency, amount)) = amount else {
            return Err(ServiceError::invalid(violations).into());
        };
        if !violations.is_empty() {
            return Err(ServiceError::invalid(violations).into());
        }
        let authorize = Authorize {
            key,
            request_hash,
            card_id,
            owner,
            currency,
            amount,
            merchant: MerchantIn {
                name,
                category_code: merchant.category_code,
                merchant_id: merchant.merchant_id,
                city: card_number::masked(merchant.city),
                country: merchant.country,
            },
            acquirer_reference: req.acquirer_reference,
        };
        let (authorization, replayed) = saga::authorize(&self.core, authorize).await?;
        Ok(answer(AuthorizeChargeResponse { authorization: Some(authorization) }, replayed))
    }

    async fn list_charges(&self, request: Request<ListChargesRequest>) -> Answer<ListChargesResponse> {
        let owner = reader(&request)?;
        let req = request.into_inner();
        let card_id = fields::uuid("card_id", &req.card_id)?;
        let status = match AuthorizationStatus::try_from(req.status) {
            Ok(AuthorizationStatus::Unspecified) => None,
            Ok(AuthorizationStatus::Approved) => Some("approved"),
            Ok(AuthorizationStatus::Declined) => Some("declined"),
            Ok(AuthorizationStatus::Captured) => Some("captured"),
            Ok(AuthorizationStatus::Voided) => Some("voided"),
            Ok(AuthorizationStatus::Expired) => Some("expired"),
            Err(_) => return Err(invalid("status", "INVALID", "unknown status")),
        };
        let page_request = req.page.unwrap_or_default();
        let page = Page::parse(page_request.page_size, &page_request.page_token, CHARGES_PAGE, 50, 200)?;
        self.owned_card(card_id, owner).await?;
        let rows = {
            let mut conn = self.core.pool.acquire().await.map_err(internal)?;
            storage::charges(&mut conn, card_id, status, page.position, page.size).await.map_err(internal)?
        };
        let next_page_token = page.next_token(CHARGES_PAGE, rows.len(), rows.last().map_or(0, |r| r.seq));
        Ok(Response::new(ListChargesResponse {
            authorizations: rows.iter().map(convert::authorization).collect(),
            page_info: Some(PageInfo { next_page_token, total_size: None }),
        }))
    }

    async fn get_charge(&self, request: Request<GetChargeRequest>) -> Answer<GetChargeResponse> {
        let owner = reader(&request)?;
        let req = request.into_inner();
        let card_id = fields::uuid("card_id", &req.card_id)?;
        let authorization_id = fields::uuid("authorization_id", &req.authorization_id)?;
        self.owned_card(card_id, owner).await?;
        let row = {
            let mut conn = self.core.pool.acquire().await.map_err(internal)?;
            storage::authorization(&mut conn, authorization_id, Some(card_id))
                .await
                .map_err(internal)?
                .ok_or_else(|| Status::from(saga::charge_not_found()))?
        };
        Ok(Response::new(GetChargeResponse { authorization: Some(convert::authorization(&row)) }))
    }

    async fn capture_charge(&self, request: Request<CaptureChargeRequest>) -> Answer<CaptureChargeResponse> {
        let (principal, owner) = charger(&request, self.core.settings.allow_owner_charges)?;
        let key = fields::required_key(&request, &principal, CAPTURE)?;
        let req = request.into_inner();
        let request_hash = idempotency::request_hash(&req.encode_to_vec());
        let amount = match req.amount.as_ref() {
            Some(m) => Some(money_field("amount", Some(m))?),
            None => None,
        };
        let op = Operation {
            key,
            request_hash,
            card_id: fields::uuid("card_id", &req.card_id)?,
            owner,
            authorization_id: fields::uuid("authorization_id", &req.authorization_id)?,
            amount,
        };
        let (authorization, replayed) = saga::capture(&self.core, op).await?;
        Ok(answer(CaptureChargeResponse { authorization: Some(authorization) }, replayed))
    }

    async fn void_charge(&self, request: Request<VoidChargeRequest>) -> Answer<VoidChargeResponse> {
        let (principal, owner) = charger(&request, self.core.settings.allow_owner_charges)?;
        let key = fields::required_key(&request, &principal, VOID)?;
        let req = request.into_inner();
        let request_hash = idempotency::request_hash(&req.encode_to_vec());
        let op = Operation {
            key,
            request_hash,
            card_id: fields::uuid("card_id", &req.card_id)?,
            owner,
            authorization_id: fields::uuid("authorization_id", &req.authorization_id)?,
            amount: None,
        };
        let (authorization, replayed) = saga::void(&self.core, op).await?;
        Ok(answer(VoidChargeResponse { authorization: Some(authorization) }, replayed))
    }

    async fn refund_charge(&self, request: Request<RefundChargeRequest>) -> Answer<RefundChargeResponse> {
        let (principal, owner) = charger(&request, self.core.settings.allow_owner_charges)?;
        let key = fields::required_key(&request, &principal, REFUND)?;
        let req = request.into_inner();
        let request_hash = idempotency::request_hash(&req.encode_to_vec());
        let op = Operation {
            key,
            request_hash,
            card_id: fields::uuid("card_id", &req.card_id)?,
            owner,
            authorization_id: fields::uuid("authorization_id", &req.authorization_id)?,
            amount: Some(money_field("amount", req.amount.as_ref())?),
        };
        let (response, replayed) = saga::refund(&self.core, op).await?;
        Ok(answer(response, replayed))
    }
}

fn status_filter(status: i32) -> Result<(Option<Vec<&'static str>>, Option<bool>), Status> {
    Ok(match CardStatus::try_from(status) {
        Ok(CardStatus::Unspecified) => (None, None),
        Ok(CardStatus::Active) => (Some(vec!["active"]), Some(false)),
        Ok(CardStatus::Frozen) => (Some(vec!["frozen"]), Some(false)),
        Ok(CardStatus::Lost) => (Some(vec!["lost"]), None),
        Ok(CardStatus::Closed) => (Some(vec!["closed"]), None),
        Ok(CardStatus::Expired) => (Some(vec!["active", "frozen"]), Some(true)),
        Err(_) => return Err(invalid("status", "INVALID", "unknown status")),
    })
}

fn time_filter(
    field: &str,
    value: Option<pbjson_types::Timestamp>,
) -> Result<Option<time::OffsetDateTime>, Status> {
    value
        .map(|t| {
            time::OffsetDateTime::from_unix_timestamp(t.seconds)
                .ok()
                // PostgreSQL's range, and no year 0 or before.
                .filter(|at| at.year() >= 1)
                .ok_or_else(|| invalid(field, "OUT_OF_RANGE", "invalid time"))
        })
        .transpose()
}

#[tonic::async_trait]
impl CardsAdminService for Api {
    async fn search_cards(&self, request: Request<SearchCardsRequest>) -> Answer<SearchCardsResponse> {
        bank_auth::require_staff_user(&request, &["admin", "support"])?;
        let req = request.into_inner();
        let (statuses, expired) = status_filter(req.status)?;
        if !req.last_four.is_empty()
            && (req.last_four.len() != 4 || !req.last_four.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(invalid("last_four", "INVALID_FORMAT", "four digits"));
        }
        let filter = CardFilter {
            owner: fields::optional_uuid("owner_user_id", &req.owner_user_id)?,
            account: fields::optional_uuid("account_id", &req.account_id)?,
            last_four: (!req.last_four.is_empty()).then_some(req.last_four),
            statuses,
            expired,
        };
        let page_request = req.page.unwrap_or_default();
        let page = Page::parse(page_request.page_size, &page_request.page_token, CARDS_PAGE, 50, 200)?;
        let mut conn = self.core.pool.acquire().await.map_err(internal)?;
        let rows = storage::cards(&mut conn, &filter, page.position, page.size).await.map_err(internal)?;
        let total = storage::count_cards(&mut conn, &filter).await.map_err(internal)?;
        let next_page_token = page.next_token(CARDS_PAGE, rows.len(), rows.last().map_or(0, |r| r.seq));
        Ok(Response::new(SearchCardsResponse {
            cards: rows.iter().map(|r| self.card(r)).collect(),
            page_info: Some(PageInfo { next_page_token, total_size: Some(total) }),
        }))
    }

    async fn admin_get_card(&self, request: Request<AdminGetCardRequest>) -> Answer<AdminGetCardResponse> {
        bank_auth::require_staff_user(&request, &["admin", "support"])?;
        let card_id = fields::uuid("card_id", &request.get_ref().card_id)?;
        let row = self.owned_card(card_id, None).await?;
        Ok(Response::new(AdminGetCardResponse { card: Some(self.card(&row)) }))
    }

    async fn force_close_card(
        &self,
        request: Request<ForceCloseCardRequest>,
    ) -> Answer<ForceCloseCardResponse> {
        let (actor, _) = bank_auth::require_staff_user(&request, &["admin"])?;
        let key = fields::optional_key(&request, &actor.to_string(), FORCE_CLOSE)?;
        let req = request.into_inner();
        let hash = idempotency::request_hash(&req.encode_to_vec());
        let card_id = fields::uuid("card_id", &req.card_id)?;
        let reason = reason_field(&req.reason)?;
        let (card, replayed) =
            self.change(card_id, None, key, hash, Change::Close, false, Some((actor, reason))).await?;
        if req.void_pending && !replayed {
            let open = {
                let mut conn = self.core.pool.acquire().await.map_err(internal)?;
                storage::open_approvals(&mut conn, card_id).await.map_err(internal)?
            };
            for authorization_id in open {
                saga::release(&self.core, authorization_id, AuthStatus::Voided).await?;
            }
        }
        Ok(answer(ForceCloseCardResponse { card: Some(card) }, replayed))
    }

    async fn list_declines(&self, request: Request<ListDeclinesRequest>) -> Answer<ListDeclinesResponse> {
        bank_auth::require_staff_user(&request, &["admin", "support"])?;
        let req = request.into_inner();
        let reason = match DeclineReason::try_from(req.reason) {
            Ok(DeclineReason::Unspecified) => None,
            Ok(reason) => Some(
                domain::Decline::ALL
                    .into_iter()
                    .find(|d| convert::decline_reason(*d) == reason)
                    .map(domain::Decline::as_str)
                    .ok_or_else(|| invalid("reason", "INVALID", "unknown reason"))?,
            ),
            Err(_) => return Err(invalid("reason", "INVALID", "unknown reason")),
        };
        let card_id = fields::optional_uuid("card_id", &req.card_id)?;
        let from = time_filter("from_time", req.from_time)?;
        let to = time_filter("to_time", req.to_time)?;
        let page_request = req.page.unwrap_or_default();
        let page = Page::parse(page_request.page_size, &page_request.page_token, DECLINES_PAGE, 50, 200)?;
        let rows = {
            let mut conn = self.core.pool.acquire().await.map_err(internal)?;
            storage::declines(&mut conn, reason, card_id, from, to, page.position, page.size)
                .await
                .map_err(internal)?
        };
        let next_page_token = page.next_token(DECLINES_PAGE, rows.len(), rows.last().map_or(0, |r| r.seq));
        Ok(Response::new(ListDeclinesResponse {
            authorizations: rows.iter().map(convert::authorization).collect(),
            page_info: Some(PageInfo { next_page_token, total_size: None }),
        }))
    }

    async fn get_vault_status(
        &self,
        request: Request<GetVaultStatusRequest>,
    ) -> Answer<GetVaultStatusResponse> {
        bank_auth::require_staff_user(&request, &["admin"])?;
        let keys = self.vault_keys().await?;
        Ok(Response::new(GetVaultStatusResponse { keys }))
    }

    async fn rotate_key_encryption_key(
        &self,
        request: Request<RotateKeyEncryptionKeyRequest>,
    ) -> Answer<RotateKeyEncryptionKeyResponse> {
        /// Keys re-wrapped per transaction, and per call (a repeat continues).
        const BATCH: i64 = 500;
        const PER_CALL: i64 = 20_000;
        let (actor, _) = bank_auth::require_staff_user(&request, &["admin"])?;
        let req = request.into_inner();
        let reason = reason_field(&req.reason)?;
        if req.new_kek_id.is_empty() {
            return Err(invalid("new_kek_id", "REQUIRED", "is required"));
        }
        if !self.core.vault.holds(&req.new_kek_id) {
            return Err(refused(ErrorCode::NotFound, "no KEK with that id is loaded"));
        }
        let vault = self.core.vault.clone();
        let new_kek = req.new_kek_id.clone();
        tx::run(&self.core.pool, |conn| {
            let (vault, new_kek, reason) = (vault.clone(), new_kek.clone(), reason.clone());
            Box::pin(async move {
                vault.set_primary(conn, &new_kek).await.map_err(vault_error)?;
                storage::insert_admin_action(conn, actor, "rotate_kek", &new_kek, &reason).await?;
                Ok(())
            })
        })
        .await?;
        let mut rewrapped = 0;
        while rewrapped < PER_CALL {
            let vault = vault.clone();
            let new_kek = new_kek.clone();
            let done = tx::run(&self.core.pool, |conn| {
                let (vault, new_kek) = (vault.clone(), new_kek.clone());
                Box::pin(async move { vault.rewrap_batch(conn, &new_kek, BATCH).await.map_err(vault_error) })
            })
            .await?;
            rewrapped += done;
            if done < BATCH {
                break;
            }
        }
        let remaining = {
            let mut conn = self.core.pool.acquire().await.map_err(internal)?;
            vault::Vault::remaining(&mut conn, &new_kek).await.map_err(|e| Status::from(vault_error(e)))?
        };
        tracing::info!(kek_id = %new_kek, rewrapped, remaining, "vault KEK rotated");
        Ok(Response::new(RotateKeyEncryptionKeyResponse {
            rewrapped_count: rewrapped,
            remaining_count: remaining,
            keys: self.vault_keys().await?,
        }))
    }
}

fn vault_error(err: vault::Error) -> tx::Error {
    match err {
        vault::Error::Database(db) => tx::Error::Database(db),
        vault::Error::NotLoaded(_) => {
            tx::Error::Refused(ServiceError::new(ErrorCode::NotFound, "no KEK with that id is loaded"))
        }
        other @ (vault::Error::Decrypt(_) | vault::Error::Duplicate) => {
            tx::Error::Refused(ServiceError::internal(&other))
        }
    }
}

impl Api {
    async fn vault_keys(&self) -> Result<Vec<KeyEncryptionKey>, Status> {
        let mut conn = self.core.pool.acquire().await.map_err(internal)?;
        let status = self
            .core
            .vault
            .status(&mut conn)
            .await
            .map_err(|e| Status::from(into_service_error(vault_error(e))))?;
        Ok(status
            .into_iter()
            .map(|k| KeyEncryptionKey {
                kek_id: k.kek_id,
                primary: k.primary,
                wrapped_data_keys: k.wrapped_data_keys,
            })
            .collect())
    }
}
