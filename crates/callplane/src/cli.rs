//! The command line, parsed by clap: the switch itself (`serve`), offline checks (`config
//! check`, `plan validate`), key creation (`apikey create`), and operator commands that use the
//! running switch's API with a key (`calls list`, `call`, `hangup`, `events`). `--help` works on
//! every command.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "callplane",
    version,
    about = "Callplane: a programmable call-control switch",
    disable_version_flag = false
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the switch (without --config: the loopback demo that answers a call)
    Serve {
        /// The config file
        #[arg(long)]
        config: Option<PathBuf>,
        /// Where the database and recordings live (overrides the file's dataDir)
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Config file commands
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Routing plan commands
    Plan {
        #[command(subcommand)]
        command: PlanCommand,
    },
    /// API key commands (on the data directory's database)
    Apikey {
        #[command(subcommand)]
        command: ApikeyCommand,
    },
    /// Calls in progress, through the API
    Calls {
        #[command(subcommand)]
        command: CallsCommand,
    },
    /// Connect FROM (a SIP user, whose phone rings first) with TO (a number, or a SIP user of
    /// the same tenant) through the API's callback
    Call {
        /// The SIP user whose phone rings first
        from: String,
        /// The number (or SIP user) called once FROM answers
        to: String,
        /// The tenant (for admin and reseller keys)
        #[arg(long)]
        tenant: Option<String>,
        /// The caller ID TO sees (default: FROM)
        #[arg(long)]
        caller_id: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// End a call, through the API
    Hangup {
        /// The call's id
        id: String,
        /// A Q.850 cause name (default NORMAL_CLEARING)
        #[arg(long)]
        cause: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Print the events stream, one JSON event per line, until interrupted
    Events {
        /// Only calls on these lines (SIP users); repeatable
        #[arg(long)]
        line: Vec<String>,
        /// Only calls on these numbers; repeatable
        #[arg(long)]
        number: Vec<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Print the version
    Version,
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Validate a config file and exit
    Check { file: PathBuf },
}

#[derive(Subcommand, Debug)]
pub enum PlanCommand {
    /// Validate a JSON block list (or a plan object with `blocks`) and exit
    Validate { file: PathBuf },
}

#[derive(Subcommand, Debug)]
pub enum ApikeyCommand {
    /// Create an API key and print it (once, on stdout alone)
    Create(ApikeyCreate),
}

#[derive(Args, Debug)]
pub struct ApikeyCreate {
    /// admin, reseller, customer or account
    #[arg(long)]
    pub realm: String,
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long)]
    pub tenant: Option<String>,
    #[arg(long)]
    pub reseller: Option<String>,
    #[arg(long)]
    pub sip_user: Option<String>,
    /// Requests per second (0: no limit); default the server's apiRateLimit
    #[arg(long)]
    pub rate_limit: Option<u32>,
    /// The config file (its dataDir and realm)
    #[arg(long, conflicts_with = "data_dir")]
    pub config: Option<PathBuf>,
    /// The data directory
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum CallsCommand {
    /// List the calls in progress in the key's scope
    List {
        /// Only calls involving this SIP user
        #[arg(long)]
        line: Option<String>,
        /// Only calls on this number
        #[arg(long)]
        number: Option<String>,
        /// Print the API's JSON instead of a table
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
}

/// Where the API is and which key to use.
#[derive(Args, Debug, Clone)]
pub struct ApiArgs {
    /// The API's address
    #[arg(long, env = "CALLPLANE_API", default_value = "http://127.0.0.1:8080")]
    pub api: String,
    /// An API key
    #[arg(long, env = "CALLPLANE_API_KEY", hide_env_values = true)]
    pub key: String,
}

/// A JSON request to the API; the answer's JSON, or an error naming status, code and field.
async fn request(
    api: &ApiArgs,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> anyhow::Result<serde_json::Value> {
    let url = format!("{}{path}", api.api.trim_end_matches('/'));
    let client = reqwest::Client::new();
    let mut req = client.request(method, &url).bearer_auth(&api.key);
    if let Some(b) = body {
        req = req
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(b.to_string());
    }
    let res = req
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach {url}: {e}"))?;
    let status = res.status();
    let text = res.text().await.unwrap_or_default();
    let value: serde_json::Value = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
    if !status.is_success() {
        let e = &value["error"];
        let field = e["field"]
            .as_str()
            .map(|f| format!(" (field {f})"))
            .unwrap_or_default();
        anyhow::bail!(
            "{} {}: {}{field}",
            status.as_u16(),
            e["code"].as_str().unwrap_or("error"),
            e["message"].as_str().unwrap_or(text.as_str())
        );
    }
    Ok(value)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// `callplane calls list`.
pub fn calls_list(
    api: &ApiArgs,
    line: Option<String>,
    number: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    let mut query = form_urlencoded::Serializer::new(String::new());
    if let Some(l) = &line {
        query.append_pair("line", l);
    }
    if let Some(n) = &number {
        query.append_pair("number", n);
    }
    let query = query.finish();
    let path = if query.is_empty() {
        "/v1/calls".to_string()
    } else {
        format!("/v1/calls?{query}")
    };
    let calls = runtime()?.block_on(request(api, reqwest::Method::GET, &path, None))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&calls)?);
        return Ok(());
    }
    let list = calls.as_array().cloned().unwrap_or_default();
    println!(
        "{:<36}  {:<11}  {:<9}  {:<20}  {:<20}  {:<16}  START",
        "ID", "STATE", "DIRECTION", "FROM", "TO", "NUMBER"
    );
    for c in &list {
        let s = |k: &str| c[k].as_str().unwrap_or("").to_string();
        println!(
            "{:<36}  {:<11}  {:<9}  {:<20}  {:<20}  {:<16}  {}",
            s("id"),
            s("state"),
            s("direction"),
            s("from"),
            s("to"),
            s("number"),
            s("startTime")
        );
    }
    eprintln!("{} call(s)", list.len());
    Ok(())
}

/// `callplane call FROM TO`: a callback, FROM's phone first.
pub fn call(
    api: &ApiArgs,
    from: &str,
    to: &str,
    tenant: Option<String>,
    caller_id: Option<String>,
) -> anyhow::Result<()> {
    let is_number = callplane_store::model::is_valid_number(to);
    let second = serde_json::json!({
        "destinationType": if is_number { "EXTERNALNUMBER" } else { "SIP_USER" },
        "destination": to,
    });
    let mut body = serde_json::json!({
        "first": {"destinationType": "SIP_USER", "destination": from},
        "second": second,
        "firstCallerId": to,
        "callerId": caller_id.unwrap_or_else(|| from.to_string()),
    });
    if let Some(t) = tenant {
        body["tenant"] = serde_json::Value::String(t);
    }
    let call = runtime()?.block_on(request(
        api,
        reqwest::Method::POST,
        "/v1/calls/callback",
        Some(body),
    ))?;
    println!("{}", call["id"].as_str().unwrap_or(""));
    eprintln!("calling {from}, then {to}");
    Ok(())
}

/// `callplane hangup ID`.
pub fn hangup(api: &ApiArgs, id: &str, cause: Option<String>) -> anyhow::Result<()> {
    let body = cause.map(|c| serde_json::json!({ "hangupCause": c }));
    let path = format!(
        "/v1/calls/{}/hangup",
        form_urlencoded::byte_serialize(id.as_bytes()).collect::<String>()
    );
    let call = runtime()?.block_on(request(api, reqwest::Method::POST, &path, body))?;
    eprintln!(
        "call {} is {}",
        call["id"].as_str().unwrap_or(id),
        call["state"].as_str().unwrap_or("ending")
    );
    Ok(())
}

/// `callplane events`: subscribes and prints every event as one JSON line.
pub fn events(api: &ApiArgs, lines: Vec<String>, numbers: Vec<String>) -> anyhow::Result<()> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let rest = api
        .api
        .strip_prefix("http://")
        .ok_or_else(|| anyhow::anyhow!("--api must be an http:// address for events"))?;
    let host = rest.split('/').next().unwrap_or(rest).to_string();
    let url = format!("ws://{host}/v1/events");
    runtime()?.block_on(async move {
        let tcp = tokio::net::TcpStream::connect(&host)
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach {host}: {e}"))?;
        let mut req =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                url.as_str(),
            )?;
        req.headers_mut()
            .insert("Authorization", format!("Bearer {}", api.key).parse()?);
        let (mut ws, _) = tokio_tungstenite::client_async(req, tcp)
            .await
            .map_err(|e| anyhow::anyhow!("events socket refused: {e}"))?;
        let sub = serde_json::json!({"op": "subscribe", "lines": lines, "numbers": numbers});
        ws.send(Message::Text(sub.to_string().into())).await?;
        while let Some(msg) = ws.next().await {
            match msg? {
                Message::Text(t) => {
                    let v: serde_json::Value =
                        serde_json::from_str(t.as_str()).unwrap_or(serde_json::Value::Null);
                    // The socket's own messages (hello, subscribed, pong) go to stderr.
                    if v.get("seq").is_some() {
                        println!("{t}");
                    } else {
                        eprintln!("{t}");
                    }
                }
                Message::Close(f) => {
                    if let Some(f) = f {
                        anyhow::bail!(
                            "the server closed the stream: {} {}",
                            u16::from(f.code),
                            f.reason
                        );
                    }
                    return Ok(());
                }
                _ => {}
            }
        }
        Ok(())
    })
}
