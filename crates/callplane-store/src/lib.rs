//! Persistence for Callplane: the provisioned objects (tenants, numbers, SIP users, trunks,
//! routing plans, announcements), API keys and call detail records, in an embedded SQLite file
//! with schema migrations compiled in. No call state lives here.

mod api_keys;
mod cdr;
mod directory;
mod error;
mod idempotency;
mod migrations;
pub mod model;
mod objects;
mod private_fs;
mod sql;
mod store;
mod writer;

pub use cdr::CdrQuery;
pub use directory::{SipDirectoryView, WATCH_INTERVAL as DIRECTORY_WATCH_INTERVAL};
pub use error::StoreError;
pub use idempotency::IdempotentAnswer;
pub use migrations::SCHEMA_VERSION;
pub use model::{
    Announcement, ApiKey, ApiRealm, Cdr, CdrLeg, FieldError, Number, Provisioning, Recording,
    RoutingPlan, SipUser, Tenant, Transport, Trunk,
};
pub use objects::TenantUsage;
pub use private_fs::{create_private_dir, file_component, DIR_MODE, FILE_MODE};
pub use store::{SipCredentials, Store, DEFAULT_REALM};
pub use writer::CdrWriter;

#[cfg(test)]
mod tests;
