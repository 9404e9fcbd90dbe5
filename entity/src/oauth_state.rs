//! `oauth_state`: the single-use `state` of an OAuth flow in progress (CSRF protection).

use sea_orm::entity::prelude::*;

/// An OAuth flow started by a company.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "oauth_state")]
pub struct Model {
    /// The random `state` value sent to the provider and expected back on the callback.
    #[sea_orm(primary_key, auto_increment = false)]
    pub state: String,
    /// The company that started the flow.
    pub company_id: Uuid,
    /// The plugin the flow connects, e.g. `"jira"`.
    pub plugin_id: String,
    /// After this instant the state is refused.
    pub expires_at: DateTimeUtc,
    /// When the callback consumed the state; a used state is refused.
    pub used_at: Option<DateTimeUtc>,
    /// When the flow was started.
    pub created_at: DateTimeUtc,
    /// SHA-256 (hex) of the random value of the cookie the flow's browser got when the flow
    /// started; the callback refuses a browser without it. `None` only for flows started
    /// before the binding existed (refused too).
    pub browser_key_hash: Option<String>,
}

/// Tables a state points at.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    /// The company that started the flow.
    #[sea_orm(
        belongs_to = "super::company::Entity",
        from = "Column::CompanyId",
        to = "super::company::Column::Id",
        on_delete = "Cascade"
    )]
    Company,
}

impl Related<super::company::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Company.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
