//! `activepref serve` and `activepref annotators`: the web server over a run (the human labeling page, the
//! live dashboard and their API; see `crates/serve/src/labeling/`) and, with `--openai`, OpenAI-compatible
//! `/v1` endpoints serving a model on the same listener.
//!
//! The server listens on loopback by default: the labeling page shows the run's prompts and completions, and
//! the dashboard is readable without a token. `--public` is the explicit opt-in to listen elsewhere.

use crate::ModelArgs;
use anyhow::{bail, Context as _, Result};
use clap::{Args, Subcommand};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

// `::serve` is the activepref-serve crate; plain `serve` here would be this module.
use ::serve::labeling::{self, LabelingState, Options};

#[derive(Args)]
pub struct ServeArgs {
    /// Run directory to label and watch (the `--run-dir` of `activepref run`, with oracle.kind = "human")
    #[arg(long, visible_alias = "run-dir", value_name = "DIR")]
    pub run: Option<PathBuf>,
    /// Address to listen on
    #[arg(long, default_value = "127.0.0.1:8787")]
    pub addr: String,
    /// Allow listening on a non-loopback address (anyone who can reach it sees the queries and the dashboard;
    /// writes still need an annotator token). Put it behind TLS.
    #[arg(long)]
    pub public: bool,
    /// Share of queries (0–1) also shown to a second annotator; their agreement (Cohen's kappa, Krippendorff's
    /// alpha) is on the dashboard. The first answer is the label either way.
    #[arg(long, default_value_t = 0.0)]
    pub overlap: f64,
    /// Plain-text guidelines for the labeling page (blank lines separate paragraphs)
    /// [default: "Prefer the more positive, well-written continuation", for the default movie-review task]
    #[arg(long, value_name = "FILE")]
    pub guidelines: Option<PathBuf>,
    /// Also serve OpenAI-compatible /v1/models, /v1/completions and /v1/chat/completions with --model
    #[arg(long)]
    pub openai: bool,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Name of the served model in /v1 requests [default: the model file or directory name]
    #[arg(long)]
    pub model_id: Option<String>,
    /// With --openai and --run: serve the run's policy after this round (0 = its starting model) instead of
    /// --model; the name defaults to `<run dir name>-round<N>`
    #[arg(long, value_name = "N")]
    pub round: Option<usize>,
    /// Environment variable holding an API key that /v1 requests must send as `Authorization: Bearer`
    #[arg(long, value_name = "VAR")]
    pub api_key_env: Option<String>,
    /// With --openai: most /v1 requests that may wait while another generates (generations run one at a
    /// time); more get a 429 with Retry-After, which OpenAI clients retry
    #[arg(long, value_name = "N", default_value_t = ::serve::openai::DEFAULT_MAX_WAITING)]
    pub max_waiting: usize,
    /// With --openai: let clients load and unload PEFT LoRA adapters at run time (vLLM's
    /// POST /v1/load_lora_adapter {"lora_name", "lora_path"} and /v1/unload_lora_adapter), each served as a
    /// model of its own. The server then reads directories that clients name, so it needs --api-key-env
    #[arg(long)]
    pub allow_lora_loading: bool,
    /// With --allow-lora-loading: most adapters loaded at once (each holds a merged copy of the weights)
    #[arg(long, value_name = "N", default_value_t = ::serve::openai::DEFAULT_MAX_ADAPTERS)]
    pub max_loras: usize,
    /// With --openai: most tokens one /v1 request may ask the model to process, n × (prompt tokens +
    /// max_tokens) summed over its prompts; more get a 400
    #[arg(long, value_name = "N", default_value_t = ::serve::openai::DEFAULT_MAX_REQUEST_TOKENS)]
    pub max_request_tokens: usize,
    /// Seconds a connection may take to send a request's head (also how long an idle kept-alive connection
    /// stays open); then it is closed
    #[arg(long, value_name = "SECS", default_value_t = ::serve::connections::DEFAULT_HEADER_TIMEOUT.as_secs())]
    pub header_timeout: u64,
    /// Seconds a request's body may take to arrive in full; then it gets a 408
    #[arg(long, value_name = "SECS", default_value_t = ::serve::connections::DEFAULT_BODY_TIMEOUT.as_secs())]
    pub body_timeout: u64,
    /// Most connections open at once; more wait to be accepted until one closes
    #[arg(long, value_name = "N", default_value_t = ::serve::connections::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// A host name requests may use to reach this server (repeatable), e.g. a reverse proxy's or this
    /// machine's DNS name. IP addresses, localhost and the --addr name always work; other names are refused,
    /// which stops DNS-rebinding pages from reaching a server on this machine.
    #[arg(long, value_name = "NAME")]
    pub allowed_host: Vec<String>,
}

#[derive(Subcommand)]
pub enum AnnotatorsAction {
    /// Register an annotator and print their token (once: the store keeps only its SHA-256)
    Add {
        /// Name shown on the dashboard and stored with each label
        name: String,
        #[arg(long, visible_alias = "run-dir", value_name = "DIR")]
        run: PathBuf,
    },
    /// Annotators with their answers, labels, ties, skips and median seconds per label
    List {
        #[arg(long, visible_alias = "run-dir", value_name = "DIR")]
        run: PathBuf,
    },
    /// Give an annotator a new token and print it (once); the old token stops working at once
    Rotate {
        name: String,
        #[arg(long, visible_alias = "run-dir", value_name = "DIR")]
        run: PathBuf,
    },
    /// Revoke an annotator's access (their token stops working at once); the answers they gave stay
    Remove {
        name: String,
        #[arg(long, visible_alias = "run-dir", value_name = "DIR")]
        run: PathBuf,
    },
}

/// The configuration a run was started with.
fn run_config(dir: &std::path::Path) -> Result<apl::ActiveConfig> {
    apl::RunDir::new(dir).read_config()
}

/// Resolves `--addr` and refuses a non-loopback address without `--public`.
fn listen_addr(addr: &str, public: bool) -> Result<SocketAddr> {
    let addrs: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .with_context(|| format!("--addr {addr:?}: expected HOST:PORT, e.g. 127.0.0.1:8787"))?
        .collect();
    let first = *addrs.first().with_context(|| format!("--addr {addr:?} resolves to no address"))?;
    if !public {
        if let Some(a) = addrs.iter().find(|a| !a.ip().is_loopback()) {
            bail!(
                "refusing to listen on {a} (from --addr {addr}): it is not a loopback address, so anyone who can \
                 reach this machine could read the run's texts and its dashboard. Pass --public to do it anyway \
                 (annotator tokens still guard every write; put it behind TLS), or use 127.0.0.1:PORT"
            );
        }
    }
    Ok(first)
}

pub fn serve(a: ServeArgs) -> Result<()> {
    if a.run.is_none() && !a.openai {
        bail!("nothing to serve: give --run DIR (the labeling app over a run) and/or --openai (a model at /v1)");
    }
    if a.allow_lora_loading && !a.openai {
        bail!("--allow-lora-loading is about the /v1 API; add --openai");
    }
    let addr = listen_addr(&a.addr, a.public)?;
    if a.openai && a.public && a.api_key_env.is_none() {
        bail!(
            "refusing --public --openai without --api-key-env VAR: anyone who can reach this machine could use the \
             model. Put a key in an environment variable and name it with --api-key-env"
        );
    }
    let mut hosts = a.allowed_host.clone();
    if let Some((name, _)) = a.addr.rsplit_once(':') {
        hosts.push(name.trim_matches(['[', ']']).to_string());
    }
    if a.header_timeout == 0 || a.body_timeout == 0 || a.max_connections == 0 || a.max_request_tokens == 0 {
        bail!("--header-timeout, --body-timeout, --max-connections and --max-request-tokens must be at least 1");
    }
    let limits = ::serve::Limits {
        header_timeout: Duration::from_secs(a.header_timeout),
        body_timeout: Duration::from_secs(a.body_timeout),
        max_connections: a.max_connections,
    };
    let mut app = ::serve::Server::new().with_allowed_hosts(hosts).with_limits(limits);
    let mut lines = Vec::new();
    if let Some(dir) = &a.run {
        let guidelines = match &a.guidelines {
            Some(p) => Some(std::fs::read_to_string(p).with_context(|| format!("--guidelines {}", p.display()))?),
            // The run's own guidelines (`[oracle] guidelines` in its config), if it set any.
            None => run_config(dir).ok().map(|c| c.oracle.guidelines).filter(|g| !g.trim().is_empty()),
        };
        let state = LabelingState::open(dir, Options { overlap: a.overlap, guidelines })?;
        let n = labeling::open_run_store(dir)?.annotators()?.len();
        app = app.with_labeling(state);
        lines.push(format!("labeling {}: http://{addr}/ (dashboard: http://{addr}/dashboard)", dir.display()));
        if n == 0 {
            lines.push(format!(
                "no annotators yet: add one with `activepref annotators add NAME --run {}`",
                dir.display()
            ));
        } else {
            lines.push(format!("{n} annotator(s) registered"));
        }
    }
    if a.openai {
        let key = match &a.api_key_env {
            Some(var) => {
                let key = std::env::var(var).with_context(|| format!("--api-key-env {var}: variable not set"))?;
                if key.trim().is_empty() {
                    bail!("--api-key-env {var}: the variable is empty; put the API key in it");
                }
                Some(key)
            }
            None => None,
        };
        if a.allow_lora_loading && key.is_none() {
            bail!(
                "--allow-lora-loading lets clients make the server read adapter directories they name; it needs \
                 --api-key-env VAR so that only holders of the key can"
            );
        }
        if a.allow_lora_loading && a.max_loras == 0 {
            bail!("--max-loras 0: at least one adapter must fit; give 1 or more");
        }
        let path = match &a.model.model {
            Some(p) => p.clone(),
            None => crate::assets::default_model()?,
        };
        let model_id = a.model_id.clone().unwrap_or_else(|| {
            path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into())
        });
        let (model, model_id) = match (a.round, &a.run) {
            (None, _) => (a.model.load()?, model_id),
            (Some(_), None) => bail!("--round needs --run DIR (the run whose checkpoint to serve)"),
            (Some(r), Some(dir)) => {
                let cfg = run_config(dir)?;
                let base = crate::run::load_model(&cfg, &a.model)?;
                let model = apl::policy::load_policy(&base, cfg.train.lora.as_ref(), &apl::RunDir::new(dir), r)?;
                let name = dir.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "run".into());
                (model, a.model_id.clone().unwrap_or_else(|| format!("{name}-round{r}")))
            }
        };
        let state = ::serve::openai::OpenAiState::new(model, model_id.clone())
            .with_lora_loading(a.allow_lora_loading, a.max_loras)
            .with_api_key(key)
            .with_max_waiting(a.max_waiting)
            .with_max_request_tokens(a.max_request_tokens);
        app = app.with_openai(Arc::new(state));
        lines.push(format!("OpenAI-compatible API: http://{addr}/v1 (model {model_id:?})"));
    }
    let listener = std::net::TcpListener::bind(addr).with_context(|| format!("listening on {addr}"))?;
    for l in lines {
        eprintln!("{l}");
    }
    eprintln!("Ctrl-C stops the server (labels are committed before the page says \"saved\").");
    app.serve_blocking(listener, true)
}

pub fn annotators(action: AnnotatorsAction) -> Result<()> {
    match action {
        AnnotatorsAction::Add { name, run } => {
            let (_, token) = labeling::add_annotator(&run, &name)?;
            eprintln!(
                "added annotator {name:?} to {}. Their token, shown only now (the store keeps its SHA-256):",
                run.display()
            );
            println!("{token}");
            eprintln!(
                "They open the labeling page (`activepref serve --run {}`, then http://127.0.0.1:8787/) and paste it.",
                run.display()
            );
            Ok(())
        }
        AnnotatorsAction::Rotate { name, run } => {
            let token = labeling::rotate_token(&run, &name)?;
            eprintln!("new token for {name:?} in {} (the old one no longer works), shown only now:", run.display());
            println!("{token}");
            Ok(())
        }
        AnnotatorsAction::Remove { name, run } => {
            labeling::remove_annotator(&run, &name)?;
            eprintln!(
                "removed annotator {name:?} from {}: their token no longer works; the answers they gave stay",
                run.display()
            );
            Ok(())
        }
        AnnotatorsAction::List { run } => {
            let store = labeling::open_run_store(&run)?;
            let (stats, agreement) = labeling::annotator_stats(&store)?;
            if stats.is_empty() {
                eprintln!(
                    "no annotators in {}: add one with `activepref annotators add NAME --run DIR`",
                    run.display()
                );
                return Ok(());
            }
            let w = stats.iter().map(|s| s.name.chars().count()).max().unwrap_or(4).max(4);
            println!(
                "{:<w$}  {:>7}  {:>6}  {:>4}  {:>5}  {:>10}",
                "name", "answers", "labels", "ties", "skips", "median s"
            );
            for s in &stats {
                let med = s.median_seconds.map(|m| format!("{m:.1}")).unwrap_or_else(|| "-".into());
                println!(
                    "{:<w$}  {:>7}  {:>6}  {:>4}  {:>5}  {:>10}",
                    s.name, s.answers, s.labels, s.ties, s.skips, med
                );
            }
            if agreement.pairs > 0 {
                let show = |x: Option<f64>| x.map(|k| format!("{k:.3}")).unwrap_or_else(|| "undefined".into());
                let (k, a) = (show(agreement.kappa), show(agreement.alpha));
                println!(
                    "agreement on {} queries answered twice: {:.1}% raw, Cohen's kappa {k}, Krippendorff's alpha {a}",
                    agreement.pairs,
                    100.0 * agreement.raw.unwrap_or(0.0)
                );
            }
            Ok(())
        }
    }
}
