//! `portcullis banned …` and `portcullis clients …`: the admin API from a shell, as tables (or
//! the API's JSON with `--json`). Plain HTTP to the admin listener, which is on loopback or
//! behind the operator's own tunnel.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use http::{HeaderMap, HeaderValue};
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde_json::Value;

/// Where the admin API is and how to be let in.
#[derive(Debug, Clone, Args)]
pub struct ApiArgs {
    /// The admin listener.
    #[arg(long, default_value = "http://127.0.0.1:9090", global = true)]
    pub api: String,
    /// A file holding the token (the token alone). Else $PORTCULLIS_TOKEN.
    #[arg(long, global = true)]
    pub token_file: Option<PathBuf>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Clone, Subcommand)]
pub enum BannedCommand {
    /// List bans in force (one page).
    List {
        #[arg(long = "as")]
        kind: Option<String>,
        #[arg(long)]
        who: Option<String>,
        #[arg(long)]
        like_who: Option<String>,
        #[arg(long)]
        by: Option<String>,
        #[arg(long, default_value_t = 1)]
        page: usize,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Ban a client ID, username, IP or CIDR; its live connections are kicked.
    Add {
        /// clientid, username, peerhost or peerhost_net.
        #[arg(long = "as")]
        kind: String,
        #[arg(long)]
        who: String,
        #[arg(long)]
        reason: Option<String>,
        /// RFC 3339; absent (and no --for-secs): until removed.
        #[arg(long, conflicts_with = "for_secs")]
        until: Option<String>,
        /// Seconds from now, by the gateway's clock (instead of --until).
        #[arg(long)]
        for_secs: Option<u64>,
    },
    /// Lift a ban.
    Rm {
        #[arg(long = "as")]
        kind: String,
        #[arg(long)]
        who: String,
    },
}

#[derive(Debug, Clone, Subcommand)]
pub enum ClientsCommand {
    /// List live connections (one page).
    List {
        #[arg(long)]
        clientid: Option<String>,
        #[arg(long)]
        like_clientid: Option<String>,
        #[arg(long)]
        username: Option<String>,
        #[arg(long)]
        ip_address: Option<String>,
        #[arg(long, default_value_t = 1)]
        page: usize,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Close every connection of a client ID (it may reconnect: ban it to keep it out).
    Kick { clientid: String },
}

/// Run a `banned` command; the text to print, or why it failed.
pub async fn banned(api: &ApiArgs, cmd: BannedCommand) -> Result<String, String> {
    match cmd {
        BannedCommand::List {
            kind,
            who,
            like_who,
            by,
            page,
            limit,
        } => {
            let q = query(&[
                ("as", kind),
                ("who", who),
                ("like_who", like_who),
                ("by", by),
                ("page", Some(page.to_string())),
                ("limit", Some(limit.to_string())),
            ]);
            let v = call(api, "GET", &format!("/api/v1/banned{q}"), None).await?;
            Ok(if api.json {
                v.to_string()
            } else {
                table(&v, &["as", "who", "by", "reason", "at", "until"])
            })
        }
        BannedCommand::Add {
            kind,
            who,
            reason,
            until,
            for_secs,
        } => {
            let mut body = serde_json::json!({ "as": kind, "who": who });
            if let Some(r) = reason {
                body["reason"] = r.into();
            }
            if let Some(u) = until {
                body["until"] = u.into();
            }
            if let Some(secs) = for_secs {
                body["for_secs"] = secs.into();
            }
            let v = call(api, "POST", "/api/v1/banned", Some(body)).await?;
            Ok(if api.json {
                v.to_string()
            } else {
                let field = |k: &str| printable(v[k].as_str().unwrap_or_default());
                format!(
                    "banned {} {} (by {})",
                    field("as"),
                    field("who"),
                    field("by")
                )
            })
        }
        BannedCommand::Rm { kind, who } => {
            let path = format!("/api/v1/banned/{}/{}", encode(&kind), encode(&who));
            call(api, "DELETE", &path, None).await?;
            Ok(format!("lifted the ban on {kind} {who}"))
        }
    }
}

/// Run a `clients` command; the text to print, or why it failed.
pub async fn clients(api: &ApiArgs, cmd: ClientsCommand) -> Result<String, String> {
    match cmd {
        ClientsCommand::List {
            clientid,
            like_clientid,
            username,
            ip_address,
            page,
            limit,
        } => {
            let q = query(&[
                ("clientid", clientid),
                ("like_clientid", like_clientid),
                ("username", username),
                ("ip_address", ip_address),
                ("page", Some(page.to_string())),
                ("limit", Some(limit.to_string())),
            ]);
            let v = call(api, "GET", &format!("/api/v1/clients{q}"), None).await?;
            Ok(if api.json {
                v.to_string()
            } else {
                let cols = ["clientid", "username", "ip_address", "route", "transport"];
                table(
                    &v,
                    &[&cols[..], &["connected_at", "bytes_in", "bytes_out"]].concat(),
                )
            })
        }
        ClientsCommand::Kick { clientid } => {
            let path = format!("/api/v1/clients/{}", encode(&clientid));
            let v = call(api, "DELETE", &path, None).await?;
            Ok(if api.json {
                v.to_string()
            } else {
                format!(
                    "kicked {} connection(s) of {clientid}; {}",
                    v["kicked"],
                    v["note"].as_str().unwrap_or_default()
                )
            })
        }
    }
}

/// Client IDs, usernames and reasons are chosen by devices (and the policy bans them on its
/// own): control characters are shown escaped, never sent to the operator's terminal.
fn printable(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

fn encode(s: &str) -> String {
    utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()
}

fn query(pairs: &[(&str, Option<String>)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", encode(v))))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

fn token(api: &ApiArgs) -> Result<String, String> {
    let raw = match &api.token_file {
        Some(f) => {
            std::fs::read_to_string(f).map_err(|e| format!("--token-file {}: {e}", f.display()))?
        }
        None => std::env::var("PORTCULLIS_TOKEN")
            .map_err(|_| "no token: give --token-file FILE or set PORTCULLIS_TOKEN".to_owned())?,
    };
    let t = raw.trim();
    if t.is_empty() {
        return Err("the token is empty".into());
    }
    Ok(t.to_owned())
}

/// One request to the admin API; its JSON answer (`null` for 204), or the API's error message.
async fn call(
    api: &ApiArgs,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Result<Value, String> {
    let hostport = api
        .api
        .strip_prefix("http://")
        .ok_or_else(|| {
            format!(
                "--api {}: only http:// (the admin API is plain HTTP on loopback)",
                api.api
            )
        })?
        .trim_end_matches('/');
    let token = token(api)?;
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::HOST,
        HeaderValue::from_str(hostport)
            .map_err(|_| format!("--api {}: not a host:port", api.api))?,
    );
    headers.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| "the token holds characters a header cannot")?,
    );
    let mut tcp = tokio::net::TcpStream::connect(hostport)
        .await
        .map_err(|e| format!("cannot reach the admin API at {}: {e}", api.api))?;
    let payload = body.map(|b| b.to_string()).unwrap_or_default();
    let answer = crate::http1::request(
        &mut tcp,
        method,
        path,
        &headers,
        payload.as_bytes(),
        Duration::from_secs(30),
    )
    .await?;
    let value: Value = if answer.body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&answer.body)
            .map_err(|e| format!("{}: the answer is not JSON ({e})", answer.status))?
    };
    if (200..300).contains(&answer.status) {
        Ok(value)
    } else {
        let message = printable(value["message"].as_str().unwrap_or("no message"));
        let code = printable(value["code"].as_str().unwrap_or(""));
        Err(format!("{} {code}: {message}", answer.status))
    }
}

/// `data` of a list answer as aligned columns, then the paging line.
fn table(v: &Value, cols: &[&str]) -> String {
    let rows: Vec<Vec<String>> = v["data"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|item| {
                    cols.iter()
                        .map(|c| match &item[*c] {
                            Value::Null => "-".to_owned(),
                            Value::String(s) => printable(s),
                            other => other.to_string(),
                        })
                        .collect()
                })
                .collect()
        })
        .unwrap_or_default();
    let mut widths: Vec<usize> = cols.iter().map(|c| c.len()).collect();
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        padded.join("  ").trim_end().to_owned()
    };
    let mut out = vec![line(cols.iter().map(|c| c.to_uppercase()).collect())];
    out.extend(rows.into_iter().map(line));
    let m = &v["meta"];
    out.push(format!(
        "page {} of {} item(s){}",
        m["page"],
        m["count"],
        if m["hasnext"] == Value::Bool(true) {
            "; more with --page"
        } else {
            ""
        }
    ));
    out.join("\n")
}
