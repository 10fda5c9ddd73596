//! `[server] recordingRetentionDays`: recordings that ended longer ago than that are removed
//! (file and listing) by a sweep at start and every hour; younger ones stay. Two recordings,
//! one that ended 40 days ago and one yesterday, are put into a server's data directory while
//! it is stopped (as a server running for weeks would have them); after a restart with a
//! 30-day retention the old one is gone from disk and from `GET /v1/recordings/{id}` (404), and
//! the other is still served.

mod common;

use chrono::{Duration as Days, SecondsFormat, Utc};
use common::*;
use std::time::Duration;

const KEY: &str = "cp_retention_admin_key_0123456789ab";

fn get(server: &Server, path: &str) -> http::HttpResponse {
    let auth = format!("Bearer {KEY}");
    http::request(
        server.http_port(),
        "GET",
        path,
        &[("Authorization", auth.as_str())],
        b"",
    )
}

#[test]
fn recordings_past_their_retention_are_removed_and_younger_ones_stay() {
    let prov = format!(
        "[[apiKeys]]\nname = \"ops\"\nrealm = \"admin\"\nkey = \"{KEY}\"\n\n{}",
        tenant_with_prompts()
    );
    let mut server = Server::start_with(
        &prov,
        ServerOptions {
            extra_server: "recordingRetentionDays = 30\n".into(),
            ..ServerOptions::default()
        },
    );
    server.stop();

    let dir = server.dir().join("data").join("recordings");
    std::fs::create_dir_all(&dir).expect("recordings dir");
    let now = Utc::now();
    let mut files = Vec::new();
    {
        let conn = rusqlite::Connection::open(server.db_path()).expect("open the database");
        for (id, ended_days_ago) in [("old-rec", 40), ("young-rec", 1)] {
            let path = dir.join(format!("{id}.wav"));
            std::fs::write(&path, pcm16_wav(8000, 1, &[1000i16; 8000])).expect("write a wav");
            let size = std::fs::metadata(&path).expect("wav").len() as i64;
            let end = now - Days::days(ended_days_ago);
            let start = end - Days::seconds(1);
            let t = |d: chrono::DateTime<Utc>| d.to_rfc3339_opts(SecondsFormat::Millis, true);
            conn.execute(
                "INSERT INTO recordings (id, call_id, tenant, path, channels, start_time, end_time, duration_ms, size_bytes) \
                 VALUES (?1, ?2, 't1', ?3, 1, ?4, ?5, 1000, ?6)",
                rusqlite::params![id, format!("call-{id}"), path.to_string_lossy(), t(start), t(end), size],
            )
            .expect("insert a recording");
            files.push(path);
        }
    }

    server.restart();
    server
        .wait_for_log(
            "recordings past their retention removed",
            Duration::from_secs(10),
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", server.log_tail()));
    assert!(!files[0].exists(), "the 40-day-old file is removed");
    assert!(files[1].exists(), "yesterday's file stays");
    let r = get(&server, "/v1/recordings/old-rec");
    assert_eq!(r.status, 404, "{}", r.describe());
    let r = get(&server, "/v1/recordings/young-rec");
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(r.header("content-type"), Some("audio/wav"));
    let left: i64 = server
        .db()
        .query_row("SELECT count(*) FROM recordings", [], |row| row.get(0))
        .expect("count");
    assert_eq!(left, 1);
}
