//! `cabine`: the Cabine media server.
//!
//! - `cabine serve [--config FILE]` runs the server (built-in defaults when no file is given).
//! - `cabine token --room R --role doctor --identity dr-1 [--ttl 1h]` prints a signed token.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use cabine_proto::jwt::Tokens;
use cabine_proto::{Grant, Identity, Role};
use cabine_server::{Config, Server};
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "cabine",
    version,
    about = "Cabine: a media server for teleconsultation cabins"
)]
struct Cli {
    /// Configuration file (TOML); keys not set keep their built-in defaults.
    #[arg(long, global = true, env = "CABINE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the server.
    Serve,
    /// Print a signed access token.
    Token {
        /// Room the token is for (`*` for an operator token valid in every room).
        #[arg(long)]
        room: String,
        /// kiosk, doctor, assistant, observer or operator.
        #[arg(long)]
        role: Role,
        /// Participant identity (the `sub` claim).
        #[arg(long)]
        identity: String,
        /// Lifetime, e.g. 30m, 1h.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// Explicit grants replacing the role's defaults (publish, subscribe, publish_data,
        /// commands, moderate, take), comma separated.
        #[arg(long, value_delimiter = ',')]
        grants: Option<Vec<String>>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let cfg = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cabine: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.cmd {
        Cmd::Serve => serve(cfg),
        Cmd::Token {
            room,
            role,
            identity,
            ttl,
            grants,
        } => token(&cfg, &room, role, &identity, ttl, grants),
    }
}

fn token(
    cfg: &Config,
    room: &str,
    role: Role,
    identity: &str,
    ttl: Duration,
    grants: Option<Vec<String>>,
) -> ExitCode {
    let fail = |msg: String| {
        eprintln!("cabine token: {msg}");
        ExitCode::from(2)
    };
    if room != "*" {
        if let Err(e) = cabine_proto::RoomId::parse(room) {
            return fail(e.to_string());
        }
    }
    let identity = match Identity::parse(identity) {
        Ok(i) => i,
        Err(e) => return fail(e.to_string()),
    };
    if ttl > cfg.auth.max_ttl {
        return fail(format!(
            "--ttl {} exceeds auth.max_ttl {}",
            humantime::format_duration(ttl),
            humantime::format_duration(cfg.auth.max_ttl)
        ));
    }
    let grants = match grants {
        None => None,
        Some(list) => {
            let mut out = Vec::new();
            for g in list {
                match serde_json::from_value::<Grant>(serde_json::Value::String(g.clone())) {
                    Ok(g) => out.push(g),
                    Err(_) => {
                        return fail(format!(
                        "unknown grant {g:?}: expected publish, subscribe, publish_data, commands, moderate, take"
                    ))
                    }
                }
            }
            Some(out)
        }
    };
    // `*` is every room for an operator; for a doctor granted `take`, the walk-in queue only.
    let queue_doctor =
        role == Role::Doctor && grants.as_ref().is_some_and(|g| g.contains(&Grant::Take));
    if room == "*" && role != Role::Operator && !queue_doctor {
        return fail(
            "room `*` is only valid for operator tokens, and for doctor tokens granted `take` \
             (the walk-in queue)"
                .into(),
        );
    }
    if cfg.uses_dev_secret() {
        eprintln!("cabine token: warning: signed with the built-in development secret");
    }
    match Tokens::new(cfg.auth.secret.as_bytes()).mint(room, role, identity, ttl, grants) {
        Ok(t) => {
            println!("{t}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(e.to_string()),
    }
}

fn serve(cfg: Config) -> ExitCode {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;

    let otel = match cabine_server::otel::Otel::init(&cfg.otel) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("cabine: {e}");
            return ExitCode::from(2);
        }
    };
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cfg.log.filter));
    let fmt = if cfg.log.format == "json" {
        tracing_subscriber::fmt::layer().json().boxed()
    } else {
        tracing_subscriber::fmt::layer().boxed()
    };
    let registry = tracing_subscriber::registry().with(fmt.with_filter(filter));
    match &otel {
        // Spans only (info and up); events stay in the process log.
        Some(o) => registry
            .with(o.layer().with_filter(EnvFilter::new("info")))
            .init(),
        None => registry.init(),
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cabine: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let drain = cfg.http.drain_timeout;
        let server = match Server::start(cfg).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("cannot start: {e}");
                return ExitCode::FAILURE;
            }
        };
        tokio::select! {
            () = wait_for_signal() => {}
            () = server.drain_requested() => tracing::info!("drain requested by an operator"),
        }
        server.shutdown(drain).await;
        if let Some(o) = &otel {
            o.flush();
        }
        ExitCode::SUCCESS
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}
