//! Announcement uploads: `PUT /v1/tenants/{t}/announcements/{name}` with a WAV file of any
//! common format as the body. It is decoded to 8 kHz mono, written as 8 kHz 16-bit mono PCM
//! under `<dataDir>/announcements/<tenant>/<name>.wav`, and the announcement row points at it.

use std::path::{Path, PathBuf};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use callplane_media::wav::{decode_wav_8k, WavWriter};
use callplane_store::model::Validate;
use callplane_store::{Announcement, ApiRealm, Provisioning};

use crate::auth::Caller;
use crate::body::{media_type, RawBody};
use crate::error::ApiError;
use crate::resources::{created, location, P};
use crate::ApiState;

/// Media types taken as a WAV upload; a missing Content-Type is accepted too (the decoder
/// checks the RIFF header anyway).
const WAV_TYPES: &[&str] = &[
    "audio/wav",
    "audio/x-wav",
    "audio/wave",
    "audio/vnd.wave",
    "application/octet-stream",
];

/// Where uploads live.
fn uploads_dir(st: &ApiState) -> PathBuf {
    st.data_dir.join("announcements")
}

/// `<dataDir>/announcements/<tenant>/<name>.wav`.
pub(crate) fn upload_path(st: &ApiState, tenant: &str, name: &str) -> PathBuf {
    uploads_dir(st)
        .join(callplane_store::file_component(tenant))
        .join(format!("{}.wav", callplane_store::file_component(name)))
}

/// Removes the file of a deleted announcement when it is one of our uploads (files named by
/// the config file belong to the operator and stay).
pub(crate) fn remove_uploaded_file(st: &ApiState, a: &Announcement) {
    let file = Path::new(&a.file);
    if file.starts_with(uploads_dir(st)) && file == upload_path(st, &a.tenant, &a.name) {
        if let Err(e) = std::fs::remove_file(file) {
            tracing::warn!(file = %file.display(), error = %e, "cannot remove announcement file");
        }
    }
}

/// Decodes and writes the upload; the error is the message for the `body` field (or a server
/// error when the file cannot be written).
fn store_wav(bytes: &[u8], path: &Path) -> Result<usize, Result<String, std::io::Error>> {
    let samples = decode_wav_8k(bytes).map_err(|e| Ok(format!("not a decodable WAV file: {e}")))?;
    if samples.is_empty() {
        return Err(Ok("the WAV file contains no audio".into()));
    }
    let dir = path
        .parent()
        .ok_or_else(|| Err(std::io::Error::other("no parent directory")))?;
    std::fs::create_dir_all(dir).map_err(Err)?;
    // Written aside and renamed, so a call playing the old version never reads half a file.
    let suffix: u64 = rand::random();
    let tmp = dir.join(format!(".upload-{suffix:016x}.tmp"));
    let written = (|| {
        let mut w = WavWriter::create(&tmp)?;
        w.write_samples(&samples)?;
        w.finalize()
    })();
    if let Err(e) = written
        .map_err(std::io::Error::other)
        .and_then(|()| std::fs::rename(&tmp, path))
    {
        let _ = std::fs::remove_file(&tmp);
        return Err(Err(e));
    }
    Ok(samples.len())
}

pub async fn upload(
    State(st): State<ApiState>,
    caller: Caller,
    P((tenant, name)): P<(String, String)>,
    headers: HeaderMap,
    RawBody(bytes): RawBody,
) -> Result<Response, ApiError> {
    caller.require(ApiRealm::Customer, "use announcements")?;
    let t = caller.tenant(&st.store, &tenant)?;
    let path = upload_path(&st, &t.name, &name);
    let a = Announcement {
        tenant: t.name.clone(),
        name: name.clone(),
        file: path.to_string_lossy().into_owned(),
    };
    let errors = a.validate_as(&a.label());
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    if let Some(m) = media_type(&headers) {
        if !WAV_TYPES.contains(&m.as_str()) {
            return Err(ApiError::unsupported_media_type("audio/wav"));
        }
    }
    let existing = st.store.get_announcement(&t.name, &name)?;
    let label = a.label();
    // Decoding (resampling) a large file takes a while: off the async threads.
    let written = tokio::task::spawn_blocking(move || store_wav(&bytes, &path))
        .await
        .map_err(|e| ApiError::internal("announcement upload task failed", &e))?;
    match written {
        Ok(samples) => {
            tracing::info!(tenant = %a.tenant, name = %a.name, samples, "announcement uploaded");
        }
        Err(Ok(why)) => return Err(ApiError::invalid_field(&label, "body", why)),
        Err(Err(e)) => return Err(ApiError::internal("cannot write announcement file", &e)),
    }
    st.store.apply_provisioning(&Provisioning {
        announcements: vec![a.clone()],
        ..Provisioning::default()
    })?;
    Ok(match existing {
        Some(_) => (StatusCode::OK, Json(a)).into_response(),
        None => created(
            location(&["tenants", &a.tenant, "announcements", &a.name]),
            a,
        ),
    })
}
