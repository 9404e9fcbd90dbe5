//! `/api/v1/companies`: tenants, created by the admin. Each gets an API key, shown once.

use chrono::{DateTime, Utc};
use entity::{api_key, company};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use sea_orm::{ActiveValue::Set, EntityTrait, TransactionTrait};
use uuid::Uuid;

use crate::auth::{AdminAuth, generate_api_key, hash_api_key};
use crate::error::{ApiError, ApiResult};
use crate::routes::ApiTags;
use crate::state::AppState;

/// The company API.
pub struct CompanyApi;

/// A company to create.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct CompanyIn {
    /// Display name.
    #[oai(validator(min_length = 1, max_length = 200))]
    pub name: String,
}

/// A created company, with its API key. The key is shown only here.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct CompanyCreatedOut {
    /// The company's id.
    pub id: Uuid,
    /// Display name.
    pub name: String,
    /// The API key for every other `/api/v1` call (`Authorization: Bearer <apiKey>`).
    pub api_key: String,
    /// When the company was created.
    pub created_at: DateTime<Utc>,
}

/// Answer of `create_company`.
#[derive(Debug, ApiResponse)]
pub enum CreateCompanyResponse {
    /// Created.
    #[oai(status = 201)]
    Created(Json<CompanyCreatedOut>),
}

#[OpenApi(prefix_path = "/api/v1", tag = "ApiTags::Companies")]
impl CompanyApi {
    /// Create a company
    ///
    /// Admin only (`Authorization: Bearer <HOOKLINE_ADMIN_TOKEN>`). Returns the company's API key,
    /// which is stored hashed and never shown again.
    #[oai(path = "/companies", method = "post", operation_id = "create_company")]
    async fn create_company(
        &self,
        _admin: AdminAuth,
        state: poem::web::Data<&AppState>,
        body: Json<CompanyIn>,
    ) -> ApiResult<CreateCompanyResponse> {
        let created = create_company(&state, &body.0.name).await?;
        Ok(CreateCompanyResponse::Created(Json(created)))
    }
}

/// Creates a company named `name` with a new API key; the answer carries the key, which is
/// stored hashed and shown only then. The API's `create_company` and the console's admin page
/// both create companies here.
pub(crate) async fn create_company(state: &AppState, name: &str) -> ApiResult<CompanyCreatedOut> {
    let name = name.trim().to_owned();
    if name.is_empty() {
        return Err(ApiError::unprocessable("name must not be blank"));
    }
    if name.chars().count() > 200 {
        return Err(ApiError::unprocessable(
            "name must be at most 200 characters",
        ));
    }
    let now = Utc::now();
    let company_id = Uuid::now_v7();
    let key = generate_api_key();
    let txn = state.db.begin().await?;
    company::Entity::insert(company::ActiveModel {
        id: Set(company_id),
        name: Set(name.clone()),
        created_at: Set(now),
    })
    .exec_without_returning(&txn)
    .await?;
    api_key::Entity::insert(api_key::ActiveModel {
        id: Set(Uuid::now_v7()),
        company_id: Set(company_id),
        key_hash: Set(hash_api_key(&key)),
        key_prefix: Set(key.chars().take(12).collect()),
        created_at: Set(now),
        last_used_at: Set(None),
    })
    .exec_without_returning(&txn)
    .await?;
    txn.commit().await?;
    tracing::info!(company.id = %company_id, "company created");
    Ok(CompanyCreatedOut {
        id: company_id,
        name,
        api_key: key,
        created_at: now,
    })
}
