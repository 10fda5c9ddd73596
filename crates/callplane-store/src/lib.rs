//! Persistence for Callplane: the provisioned objects (tenants, numbers, SIP users, trunks,
//! routing plans, announcements) and call detail records, in an embedded SQLite file with
//! schema migrations compiled in. No call state lives here.

mod cdr;
mod error;
mod migrations;
pub mod model;
mod sql;
mod store;
mod writer;

pub use error::StoreError;
pub use migrations::SCHEMA_VERSION;
pub use model::{
    Announcement, Cdr, CdrLeg, FieldError, Number, Provisioning, RoutingPlan, SipUser, Tenant,
    Transport, Trunk,
};
pub use store::Store;
pub use writer::CdrWriter;

#[cfg(test)]
mod tests;
