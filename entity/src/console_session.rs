//! `console_session`: a browser signed in to the console, as a company or as the admin.

use sea_orm::entity::prelude::*;

/// A signed-in browser. The cookie carries a random token; only its SHA-256 is stored here.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "console_session")]
pub struct Model {
    /// Hex SHA-256 of the session cookie's token.
    #[sea_orm(primary_key, auto_increment = false)]
    pub token_hash: String,
    /// The company signed in; `None` for the admin's session.
    pub company_id: Option<Uuid>,
    /// The token every form of this session must carry (CSRF protection).
    pub csrf_token: String,
    /// When the session was created (at sign-in).
    pub created_at: DateTimeUtc,
    /// After this instant the session is refused and deleted.
    pub expires_at: DateTimeUtc,
}

/// Tables a session points at.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    /// The company signed in.
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
