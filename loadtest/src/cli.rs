//! The `loadtest` command line: flags and/or a scenario file in, a verdict and reports out.
//!
//! Exit codes: 0 pass, 1 an SLO was breached, 2 the run is INVALID (the generator was
//! saturated), 3 the run could not be carried out (server unreachable, joins refused),
//! 4 bad input (flags or scenario file).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Parser;

use marquee_client::relay::Impairment;

use crate::access::Tokens;
use crate::report::{Verdict, table};
use crate::scenario::{Churn, PartyLoad, Scenario, SecondWave, SignalingLoad, Spike};
use crate::schedule::{Arrival, Departure};

pub const EXIT_BAD_INPUT: u8 = 4;

/// Load-test a Marquee server with real WebRTC viewers, watch parties, churn or signaling
/// clients. Flags override the scenario file.
#[derive(Debug, Parser)]
#[command(name = "loadtest", version)]
pub struct Args {
    /// A TOML scenario file (see loadtest/scenarios/).
    #[arg(long)]
    pub scenario: Option<PathBuf>,
    /// The server: host:port, http://host:port or ws://host:port/ws.
    #[arg(long)]
    pub server: Option<String>,
    /// Seed of every random choice (arrivals, impairment, party actions).
    #[arg(long)]
    pub seed: Option<u64>,
    /// PID of the server process, to sample its CPU and memory from /proc.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// The server's token secret: every simulated client then presents its own access
    /// token, as against a production server. Without it, the server must run with --dev.
    ///
    /// Prefer the environment variable or --auth-secret-file: a flag shows in `ps`. Never
    /// put it in a scenario file.
    #[arg(long, env = "MARQUEE_AUTH_SECRET", hide_env_values = true)]
    pub auth_secret: Option<String>,
    /// A file holding the server's token secret (a trailing newline is ignored).
    #[arg(long, env = "MARQUEE_AUTH_SECRET_FILE", conflicts_with = "auth_secret")]
    pub auth_secret_file: Option<PathBuf>,

    /// Spike: number of viewers of the live event.
    #[arg(long, allow_hyphen_values = true)]
    pub viewers: Option<u64>,
    /// Arrival curve: step | ramp:SECONDS | poisson:BURSTS_PER_S[xBURST].
    #[arg(long, allow_hyphen_values = true)]
    pub arrival: Option<String>,
    /// Seconds everyone stays after the last arrival.
    #[arg(long, allow_hyphen_values = true)]
    pub hold: Option<f64>,
    /// Spike: N more viewers arriving (on the same curve) AFTER_S seconds after the last of
    /// the first wave, while it watches: `500@20`.
    #[arg(long, allow_hyphen_values = true)]
    pub second_wave: Option<String>,
    /// Spike: viewers join over WHEP at this http:// endpoint (`{room}` is replaced by the
    /// room's code), against Marquee or any WHEP server (with --room: no synthetic host).
    #[arg(long)]
    pub whep: Option<String>,
    /// Departure: all | gradual:SECONDS.
    #[arg(long, allow_hyphen_values = true)]
    pub depart: Option<String>,
    /// Join this existing room instead of starting a synthetic host.
    #[arg(long)]
    pub room: Option<String>,
    /// The synthetic host's bitrate.
    #[arg(long, allow_hyphen_values = true)]
    pub bitrate_kbps: Option<f64>,
    /// Pass one packet in N to the WebRTC stack (1 = full-cost viewers).
    #[arg(long, allow_hyphen_values = true)]
    pub sample_every: Option<u32>,
    /// Seconds a viewer may take from start to its first keyframe.
    #[arg(long, allow_hyphen_values = true)]
    pub join_timeout: Option<f64>,

    /// Watch parties: how many.
    #[arg(long, allow_hyphen_values = true)]
    pub parties: Option<u64>,
    /// Members per party.
    #[arg(long, allow_hyphen_values = true)]
    pub members: Option<u64>,
    /// Seconds the parties run.
    #[arg(long, allow_hyphen_values = true)]
    pub party_duration: Option<f64>,
    /// Seconds between each host's playback commands.
    #[arg(long, allow_hyphen_values = true)]
    pub command_every: Option<f64>,
    /// Chat messages per member per second.
    #[arg(long, allow_hyphen_values = true)]
    pub chat_rate: Option<f64>,

    /// Churn: connect → media → close cycles.
    #[arg(long, allow_hyphen_values = true)]
    pub churn: Option<u64>,
    /// Churn cycles running at once.
    #[arg(long, allow_hyphen_values = true)]
    pub churn_concurrency: Option<u64>,

    /// Signaling only: WebSocket clients joining with no media (uses --arrival and --hold).
    #[arg(long, allow_hyphen_values = true)]
    pub signaling: Option<u64>,

    /// Impairment: random loss in percent, each direction.
    #[arg(long, allow_hyphen_values = true)]
    pub loss: Option<f64>,
    /// Impairment: one-way delay in ms.
    #[arg(long, allow_hyphen_values = true)]
    pub delay: Option<f64>,
    /// Impairment: ± jitter in ms.
    #[arg(long, allow_hyphen_values = true)]
    pub jitter: Option<f64>,
    /// Impairment: per-viewer bandwidth cap in kbit/s.
    #[arg(long, allow_hyphen_values = true)]
    pub bandwidth_kbps: Option<f64>,

    /// An SLO: key=value, an upper bound (repeatable), e.g. join_p99_ms=1000.
    #[arg(long = "slo")]
    pub slos: Vec<String>,
    /// Write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the HTML report here.
    #[arg(long)]
    pub html: Option<PathBuf>,
    /// No live progress line.
    #[arg(long)]
    pub no_progress: bool,
}

/// Parses `step`, `ramp:10`, `poisson:50` or `poisson:50x4`.
pub fn parse_arrival(spec: &str) -> Result<Arrival> {
    let (curve, arg) = spec.split_once(':').unwrap_or((spec, ""));
    let number = |s: &str| -> Result<f64> {
        s.trim()
            .parse()
            .with_context(|| format!("--arrival {spec}: {s:?} is not a number"))
    };
    Ok(match curve {
        "step" => Arrival::Step,
        "ramp" => Arrival::Ramp {
            over_s: number(arg)?,
        },
        "poisson" => {
            let (rate, burst) = arg.split_once('x').unwrap_or((arg, "1"));
            Arrival::Poisson {
                rate_per_s: number(rate)?,
                burst: burst
                    .trim()
                    .parse()
                    .with_context(|| format!("--arrival {spec}: burst {burst:?} is not a count"))?,
            }
        }
        _ => bail!("--arrival {spec}: expected step, ramp:SECONDS or poisson:RATE[xBURST]"),
    })
}

/// Parses `500@20`: 500 viewers, 20 s after the first wave's last arrival.
pub fn parse_second_wave(spec: &str) -> Result<SecondWave> {
    let (viewers, after) = spec
        .split_once('@')
        .with_context(|| format!("--second-wave {spec}: expected VIEWERS@AFTER_SECONDS"))?;
    Ok(SecondWave {
        viewers: viewers
            .trim()
            .parse()
            .with_context(|| format!("--second-wave {spec}: {viewers:?} is not a count"))?,
        after_s: after
            .trim()
            .parse()
            .with_context(|| format!("--second-wave {spec}: {after:?} is not a number"))?,
    })
}

/// Parses `all` or `gradual:10`.
pub fn parse_departure(spec: &str) -> Result<Departure> {
    match spec.split_once(':') {
        None if spec == "all" => Ok(Departure::AllAtOnce),
        Some(("gradual", s)) => Ok(Departure::Gradual {
            over_s: s
                .parse()
                .with_context(|| format!("--depart {spec}: {s:?} is not a number"))?,
        }),
        _ => bail!("--depart {spec}: expected all or gradual:SECONDS"),
    }
}

impl Args {
    /// The clients' access tokens: from the secret given, or none.
    pub fn tokens(&self, now_unix: u64) -> Result<Tokens> {
        let secret = match (&self.auth_secret, &self.auth_secret_file) {
            (Some(secret), _) => secret.clone(),
            (None, Some(path)) => std::fs::read_to_string(path)
                .with_context(|| format!("--auth-secret-file {}", path.display()))?
                .trim_end_matches(['\r', '\n'])
                .to_owned(),
            (None, None) => return Ok(Tokens::none()),
        };
        Tokens::with_secret(&secret, now_unix)
    }

    /// The scenario: the file (if any) with the flags applied on top.
    pub fn scenario(&self) -> Result<Scenario> {
        let mut s = match &self.scenario {
            Some(path) => Scenario::from_file(path)?,
            None => Scenario::default(),
        };
        if let Some(v) = &self.server {
            s.server = v.clone();
        }
        if let Some(v) = self.seed {
            s.seed = v;
        }
        if self.server_pid.is_some() {
            s.server_pid = self.server_pid;
        }
        let arrival = self.arrival.as_deref().map(parse_arrival).transpose()?;
        let spike_flags = self.viewers.is_some()
            || self.room.is_some()
            || self.bitrate_kbps.is_some()
            || self.sample_every.is_some()
            || self.depart.is_some()
            || self.second_wave.is_some()
            || self.whep.is_some()
            || self.join_timeout.is_some();
        if spike_flags || (s.spike.is_some() && (arrival.is_some() || self.hold.is_some())) {
            let spike = s.spike.get_or_insert_with(Spike::default);
            set(&mut spike.viewers, self.viewers);
            set(&mut spike.arrival, arrival.clone());
            set(&mut spike.hold_s, self.hold);
            set(
                &mut spike.departure,
                self.depart.as_deref().map(parse_departure).transpose()?,
            );
            if self.room.is_some() {
                spike.room = self.room.clone();
            }
            if self.whep.is_some() {
                spike.whep = self.whep.clone();
            }
            if let Some(spec) = &self.second_wave {
                spike.second_wave = Some(parse_second_wave(spec)?);
            }
            set(&mut spike.bitrate_kbps, self.bitrate_kbps);
            set(&mut spike.sample_every, self.sample_every);
            set(&mut spike.join_timeout_s, self.join_timeout);
        }
        if self.parties.is_some()
            || self.members.is_some()
            || self.party_duration.is_some()
            || self.command_every.is_some()
            || self.chat_rate.is_some()
        {
            let party = s.party.get_or_insert_with(PartyLoad::default);
            set(&mut party.parties, self.parties);
            set(&mut party.members, self.members);
            set(&mut party.duration_s, self.party_duration);
            set(&mut party.command_every_s, self.command_every);
            set(&mut party.chat_per_member_per_s, self.chat_rate);
        }
        if self.churn.is_some() || self.churn_concurrency.is_some() {
            let churn = s.churn.get_or_insert_with(Churn::default);
            set(&mut churn.cycles, self.churn);
            set(&mut churn.concurrency, self.churn_concurrency);
        }
        if self.signaling.is_some() {
            let sig = s.signaling.get_or_insert_with(SignalingLoad::default);
            set(&mut sig.clients, self.signaling);
            set(&mut sig.arrival, arrival);
            set(&mut sig.hold_s, self.hold);
        }
        if self.loss.is_some()
            || self.delay.is_some()
            || self.jitter.is_some()
            || self.bandwidth_kbps.is_some()
        {
            let imp = s.impairment.get_or_insert_with(Impairment::default);
            set(&mut imp.loss_pct, self.loss);
            set(&mut imp.delay_ms, self.delay);
            set(&mut imp.jitter_ms, self.jitter);
            if self.bandwidth_kbps.is_some() {
                imp.bandwidth_kbps = self.bandwidth_kbps;
            }
            imp.seed = s.seed;
        }
        for text in &self.slos {
            let (key, limit) = crate::slo::parse(text)?;
            s.slo.insert(key, limit);
        }
        for (key, limit) in &s.slo {
            crate::slo::check(key, *limit)?;
        }
        s.validate()?;
        Ok(s)
    }
}

fn set<T>(field: &mut T, value: Option<T>) {
    if let Some(value) = value {
        *field = value;
    }
}

/// The `loadtest` binary.
pub fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(err) => {
            let code = if err.use_stderr() { EXIT_BAD_INPUT } else { 0 };
            let _ = err.print();
            return ExitCode::from(code);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let now_unix = (crate::run::unix_ms_f64() / 1000.0) as u64;
    let (scenario, tokens) = match args
        .scenario()
        .and_then(|s| Ok((s, args.tokens(now_unix)?)))
    {
        Ok(parsed) => parsed,
        Err(err) => {
            eprintln!("loadtest: {err:#}");
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(err) => {
            eprintln!("loadtest: starting the runtime: {err}");
            return ExitCode::from(Verdict::Error.exit_code());
        }
    };
    let code = runtime.block_on(execute(&args, &scenario, tokens));
    // Viewer connections still closing must not hold the process.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    ExitCode::from(code)
}

/// Resolves and checks the server, runs, prints and writes the reports; the exit code.
pub async fn execute(args: &Args, scenario: &Scenario, tokens: Tokens) -> u8 {
    let server = match preflight(&scenario.server).await {
        Ok(addr) => addr,
        Err(err) => {
            eprintln!("loadtest: {err:#}");
            return Verdict::Error.exit_code();
        }
    };
    let report = crate::run::run(scenario, server, tokens, !args.no_progress).await;
    println!("{}", table::render(&report));
    for (path, write) in [
        (
            &args.json,
            crate::report::Report::write_json as fn(&_, &_) -> Result<()>,
        ),
        (&args.html, crate::report::Report::write_html),
    ] {
        if let Some(path) = path {
            if let Err(err) = write(&report, path) {
                eprintln!("loadtest: {err:#}");
            } else {
                eprintln!("loadtest: wrote {}", path.display());
            }
        }
    }
    if report.verdict == Verdict::Error {
        eprintln!(
            "loadtest: the run could not be carried out: {}",
            report
                .errors
                .first()
                .map_or("see the report", String::as_str)
        );
    }
    report.verdict.exit_code()
}

/// Resolves the server and checks it answers HTTP, so an unreachable or wrong URL fails in a
/// second with a clear message instead of as a thousand failed joins.
async fn preflight(server: &str) -> Result<std::net::SocketAddr> {
    let addr = crate::run::resolve_server(server).await?;
    let connect = tokio::time::timeout(
        std::time::Duration::from_secs(3),
        tokio::net::TcpStream::connect(addr),
    )
    .await;
    match connect {
        Ok(Ok(_)) => Ok(addr),
        Ok(Err(err)) => bail!("cannot reach the server at {addr} ({server}): {err}"),
        Err(_) => bail!("cannot reach the server at {addr} ({server}): no answer within 3 s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_file_signs_the_clients_tokens() {
        let secret = "a-secret-mounted-as-a-file-0123456789abc";
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, format!("{secret}\r\n")).unwrap();
        let args = Args::try_parse_from([
            "loadtest".as_ref(),
            "--auth-secret-file".as_ref(),
            file.as_os_str(),
        ])
        .unwrap();
        let token = args
            .tokens(1_800_000_000)
            .unwrap()
            .mint(crate::access::ClientRole::Viewer, "v")
            .expect("a token with a secret");
        let key = marquee_protocol::auth::TokenKey::new(secret.as_bytes()).unwrap();
        assert!(key.verify(&token, 1_800_000_000).is_ok());
        let none = Args::try_parse_from(["loadtest"]).unwrap();
        assert!(
            none.tokens(0)
                .unwrap()
                .mint(crate::access::ClientRole::Host, "h")
                .is_none()
        );
    }

    #[test]
    fn arrival_and_departure_specs() {
        assert_eq!(parse_arrival("step").unwrap(), Arrival::Step);
        assert_eq!(
            parse_arrival("ramp:10").unwrap(),
            Arrival::Ramp { over_s: 10.0 }
        );
        assert_eq!(
            parse_arrival("poisson:50x4").unwrap(),
            Arrival::Poisson {
                rate_per_s: 50.0,
                burst: 4
            }
        );
        assert!(parse_arrival("wave").is_err());
        assert_eq!(
            parse_second_wave("500@20").unwrap(),
            SecondWave {
                viewers: 500,
                after_s: 20.0
            }
        );
        assert!(parse_second_wave("500").is_err());
        assert!(parse_second_wave("many@20").is_err());
        assert!(parse_arrival("ramp:soon").is_err());
        assert_eq!(parse_departure("all").unwrap(), Departure::AllAtOnce);
        assert_eq!(
            parse_departure("gradual:5").unwrap(),
            Departure::Gradual { over_s: 5.0 }
        );
        assert!(parse_departure("later").is_err());
    }

    #[test]
    fn flags_build_and_validate_the_scenario() {
        let args = Args::try_parse_from([
            "loadtest",
            "--viewers",
            "60",
            "--arrival",
            "ramp:3",
            "--parties",
            "3",
            "--slo",
            "join_p99_ms=1000",
        ])
        .unwrap();
        let s = args.scenario().unwrap();
        assert_eq!(s.kind(), "spike+party");
        assert_eq!(s.spike.as_ref().unwrap().viewers, 60);
        assert_eq!(s.slo["join_p99_ms"], 1000.0);

        for (flags, expect) in [
            (vec!["--viewers", "0"], "spike.viewers must be at least 1"),
            (
                vec!["--viewers", "5", "--arrival", "poisson:-3"],
                "rate_per_s",
            ),
            (vec!["--viewers", "5", "--slo", "nope=1"], "unknown SLO key"),
            (vec!["--parties", "2", "--members", "1"], "party.members"),
            (vec![], "nothing to run"),
        ] {
            let args = Args::try_parse_from(std::iter::once("loadtest").chain(flags)).unwrap();
            let err = format!("{:#}", args.scenario().unwrap_err());
            assert!(err.contains(expect), "{err}");
        }
    }
}
