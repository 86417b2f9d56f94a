//! What to run: a scenario file (TOML) and/or command-line flags, validated before anything
//! connects. A scenario has one or more parts, run side by side: a live-event `spike`, watch
//! `party`s, `churn` cycles and `signaling`-only clients.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use marquee_client::relay::Impairment;
use serde::{Deserialize, Serialize};

use crate::schedule::{Arrival, Departure};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    #[serde(default = "default_name")]
    pub name: String,
    /// `host:port`, `http://host:port` or `ws://host:port/ws`.
    #[serde(default = "default_server")]
    pub server: String,
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Sample the server process's CPU and memory from `/proc/<pid>`.
    #[serde(default)]
    pub server_pid: Option<u32>,
    #[serde(default)]
    pub spike: Option<Spike>,
    #[serde(default)]
    pub party: Option<PartyLoad>,
    #[serde(default)]
    pub churn: Option<Churn>,
    #[serde(default)]
    pub signaling: Option<SignalingLoad>,
    /// Applied between media clients and the server by a userspace relay.
    #[serde(default)]
    pub impairment: Option<Impairment>,
    /// Upper bounds, by report key (`join_p99_ms = 1000`).
    #[serde(default)]
    pub slo: BTreeMap<String, f64>,
}

fn default_name() -> String {
    "loadtest".to_owned()
}
fn default_server() -> String {
    "127.0.0.1:8080".to_owned()
}
fn default_seed() -> u64 {
    1
}

/// A live event: one synthetic host, `viewers` arriving on a curve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Spike {
    pub viewers: u64,
    pub arrival: Arrival,
    /// How long everyone stays after the last arrival.
    pub hold_s: f64,
    pub departure: Departure,
    /// Join an existing room instead of starting a synthetic host.
    pub room: Option<String>,
    /// The synthetic host's video bitrate (30 fps VP8, keyframe every 2 s) plus 64 kbit/s Opus.
    pub bitrate_kbps: f64,
    /// Pass one RTP packet in this many to the WebRTC stack (1 = a full-cost viewer).
    pub sample_every: u32,
    pub join_timeout_s: f64,
    /// More viewers arriving (on the same curve) while the first ones watch: the join spike
    /// an audience already watching must not feel.
    pub second_wave: Option<SecondWave>,
    /// Viewers join over WHEP at this `http://` endpoint instead of Marquee's WebSocket
    /// protocol; `{room}` is replaced by the room's code (`http://host:8080/whep/{room}`).
    /// Any WHEP server works: with `room` set, no synthetic host is started and the stream is
    /// whatever that server plays.
    pub whep: Option<String>,
}

/// A second wave of a spike's viewers. The first wave's end-to-end latency is recorded
/// apart in the steady seconds before it (`e2e_steady`) and while it joins
/// (`e2e_second_wave`), so a report shows what the newcomers cost the audience.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecondWave {
    pub viewers: u64,
    /// Seconds from the first wave's last arrival to the second wave's first. The first
    /// [`SecondWave::SETTLE_S`] of them let the first wave's joins finish; the rest is the
    /// steady baseline.
    pub after_s: f64,
}

impl SecondWave {
    /// Seconds after an arrival phase before latency counts as steady (joins finish well
    /// within a second; keyframes come every 2 s).
    pub const SETTLE_S: f64 = 3.0;
}

impl Default for Spike {
    fn default() -> Self {
        Self {
            viewers: 100,
            arrival: Arrival::Ramp { over_s: 10.0 },
            hold_s: 10.0,
            departure: Departure::AllAtOnce,
            room: None,
            bitrate_kbps: 1500.0,
            sample_every: 32,
            join_timeout_s: 10.0,
            second_wave: None,
            whep: None,
        }
    }
}

/// Watch parties: `parties` of `members`, hosts controlling playback, everyone chatting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PartyLoad {
    pub parties: u64,
    pub members: u64,
    pub duration_s: f64,
    /// Each party's host sends a play, pause, seek or rate command this often.
    pub command_every_s: f64,
    /// Chat messages per member per second (reactions at the same rate).
    pub chat_per_member_per_s: f64,
}

impl Default for PartyLoad {
    fn default() -> Self {
        Self {
            parties: 10,
            members: 4,
            duration_s: 20.0,
            command_every_s: 2.0,
            chat_per_member_per_s: 0.2,
        }
    }
}

/// Connect → media → close cycles, to find leaks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Churn {
    pub cycles: u64,
    pub concurrency: u64,
    /// How long each viewer keeps receiving media before closing.
    pub media_s: f64,
}

impl Default for Churn {
    fn default() -> Self {
        Self {
            cycles: 200,
            concurrency: 10,
            media_s: 1.0,
        }
    }
}

/// WebSocket viewers that join a live event and stay, with no media.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SignalingLoad {
    pub clients: u64,
    pub arrival: Arrival,
    pub hold_s: f64,
}

impl Default for SignalingLoad {
    fn default() -> Self {
        Self {
            clients: 1000,
            arrival: Arrival::Ramp { over_s: 10.0 },
            hold_s: 10.0,
        }
    }
}

impl Default for Scenario {
    fn default() -> Self {
        Self {
            name: default_name(),
            server: default_server(),
            seed: default_seed(),
            server_pid: None,
            spike: None,
            party: None,
            churn: None,
            signaling: None,
            impairment: None,
            slo: BTreeMap::new(),
        }
    }
}

impl Scenario {
    /// Reads a scenario file; errors name the file and, for TOML, the line and field.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading scenario file {}", path.display()))?;
        toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("scenario file {} is not valid: {e}", path.display()))
    }

    /// Checks every parameter; the message names the field and the bad value.
    pub fn validate(&self) -> Result<()> {
        let mut problems = Vec::new();
        if self.spike.is_none()
            && self.party.is_none()
            && self.churn.is_none()
            && self.signaling.is_none()
        {
            problems.push(
                "nothing to run: give a spike (--viewers), party (--parties), churn (--churn) \
                 or signaling (--signaling) part"
                    .to_owned(),
            );
        }
        if let Some(s) = &self.spike {
            if s.viewers == 0 {
                problems.push("spike.viewers must be at least 1, got 0".to_owned());
            }
            push_err(&mut problems, s.arrival.validate());
            push_err(&mut problems, s.departure.validate());
            positive(&mut problems, "spike.bitrate_kbps", s.bitrate_kbps);
            non_negative(&mut problems, "spike.hold_s", s.hold_s);
            positive(&mut problems, "spike.join_timeout_s", s.join_timeout_s);
            if let Some(url) = &s.whep
                && !url.starts_with("http://")
            {
                problems.push(format!(
                    "spike.whep must be an http:// endpoint URL, got {url:?}"
                ));
            }
            if s.whep.is_some() && self.impairment.as_ref().is_some_and(|i| !i.is_noop()) {
                problems.push(
                    "spike.whep cannot be combined with an impairment (the relay rewrites \
                     candidates in Marquee's offers, which WHEP viewers do not get)"
                        .to_owned(),
                );
            }
            if let Some(w) = &s.second_wave {
                if w.viewers == 0 {
                    problems.push("spike.second_wave.viewers must be at least 1, got 0".to_owned());
                }
                if !(w.after_s.is_finite() && w.after_s >= SecondWave::SETTLE_S + 2.0) {
                    problems.push(format!(
                        "spike.second_wave.after_s must be at least {} s (joins settle for {} s, \
                         then at least 2 s of steady baseline), got {}",
                        SecondWave::SETTLE_S + 2.0,
                        SecondWave::SETTLE_S,
                        w.after_s
                    ));
                }
            }
            if s.sample_every == 0 {
                problems.push("spike.sample_every must be at least 1, got 0".to_owned());
            }
        }
        if let Some(p) = &self.party {
            if p.parties == 0 {
                problems.push("party.parties must be at least 1, got 0".to_owned());
            }
            if p.members < 2 {
                problems.push(format!(
                    "party.members must be at least 2, got {}",
                    p.members
                ));
            }
            positive(&mut problems, "party.duration_s", p.duration_s);
            positive(&mut problems, "party.command_every_s", p.command_every_s);
            non_negative(
                &mut problems,
                "party.chat_per_member_per_s",
                p.chat_per_member_per_s,
            );
        }
        if let Some(c) = &self.churn {
            if c.cycles == 0 {
                problems.push("churn.cycles must be at least 1, got 0".to_owned());
            }
            if c.concurrency == 0 {
                problems.push("churn.concurrency must be at least 1, got 0".to_owned());
            }
            non_negative(&mut problems, "churn.media_s", c.media_s);
        }
        if let Some(s) = &self.signaling {
            if s.clients == 0 {
                problems.push("signaling.clients must be at least 1, got 0".to_owned());
            }
            push_err(&mut problems, s.arrival.validate());
            non_negative(&mut problems, "signaling.hold_s", s.hold_s);
        }
        if let Some(i) = &self.impairment {
            push_err(
                &mut problems,
                i.validate().map_err(|e| format!("impairment: {e}")),
            );
        }
        for (key, limit) in &self.slo {
            if !limit.is_finite() {
                problems.push(format!("slo.{key} must be a finite number, got {limit}"));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            bail!("invalid scenario:\n  - {}", problems.join("\n  - "))
        }
    }

    /// The parts that run, e.g. `spike+party`.
    pub fn kind(&self) -> String {
        let parts: Vec<&str> = [
            self.spike.as_ref().map(|_| "spike"),
            self.party.as_ref().map(|_| "party"),
            self.churn.as_ref().map(|_| "churn"),
            self.signaling.as_ref().map(|_| "signaling"),
        ]
        .into_iter()
        .flatten()
        .collect();
        parts.join("+")
    }

    /// One line for reports.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(s) = &self.spike {
            parts.push(format!(
                "spike: {} viewers{}, {}, hold {} s, leave {}, {} kbit/s{}",
                s.viewers,
                s.second_wave
                    .as_ref()
                    .map(|w| format!(" + {} more {} s later", w.viewers, w.after_s))
                    .unwrap_or_default()
                    + &s.whep
                        .as_ref()
                        .map(|url| format!(" over WHEP ({url})"))
                        .unwrap_or_default(),
                s.arrival.describe(),
                s.hold_s,
                s.departure.describe(),
                s.bitrate_kbps,
                s.room
                    .as_ref()
                    .map(|r| format!(", room {r}"))
                    .unwrap_or_default()
            ));
        }
        if let Some(p) = &self.party {
            parts.push(format!(
                "party: {} × {} members for {} s, a command every {} s, {} chats/member/s",
                p.parties, p.members, p.duration_s, p.command_every_s, p.chat_per_member_per_s
            ));
        }
        if let Some(c) = &self.churn {
            parts.push(format!(
                "churn: {} cycles, {} at a time, {} s of media each",
                c.cycles, c.concurrency, c.media_s
            ));
        }
        if let Some(s) = &self.signaling {
            parts.push(format!(
                "signaling: {} clients, {}, hold {} s",
                s.clients,
                s.arrival.describe(),
                s.hold_s
            ));
        }
        if let Some(i) = &self.impairment {
            parts.push(format!(
                "impairment: loss {} %, delay {} ± {} ms{}",
                i.loss_pct,
                i.delay_ms,
                i.jitter_ms,
                i.bandwidth_kbps
                    .map(|b| format!(", cap {b} kbit/s"))
                    .unwrap_or_default()
            ));
        }
        format!("{} — {}", self.name, parts.join("; "))
    }
}

fn push_err(problems: &mut Vec<String>, result: Result<(), String>) {
    if let Err(e) = result {
        problems.push(e);
    }
}

fn positive(problems: &mut Vec<String>, field: &str, value: f64) {
    if !(value.is_finite() && value > 0.0) {
        problems.push(format!("{field} must be a positive number, got {value}"));
    }
}

fn non_negative(problems: &mut Vec<String>, field: &str, value: f64) {
    if !(value.is_finite() && value >= 0.0) {
        problems.push(format!("{field} must be zero or more, got {value}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_file_parses_and_validates() {
        let s: Scenario = toml::from_str(
            r#"
            name = "doors open"
            server = "127.0.0.1:9000"
            seed = 7
            [spike]
            viewers = 500
            arrival = { curve = "poisson", rate_per_s = 20, burst = 5 }
            hold_s = 30
            departure = { mode = "gradual", over_s = 5 }
            [party]
            parties = 3
            members = 4
            [impairment]
            loss_pct = 1.5
            delay_ms = 20
            [slo]
            join_p99_ms = 1000
            loss_pct = 1
            "#,
        )
        .unwrap();
        s.validate().unwrap();
        assert_eq!(s.kind(), "spike+party");
        assert_eq!(s.spike.as_ref().unwrap().viewers, 500);
        assert_eq!(s.slo["join_p99_ms"], 1000.0);
        assert!(s.describe().contains("500 viewers"), "{}", s.describe());
    }

    #[test]
    fn impossible_parameters_are_named() {
        let s = Scenario {
            spike: Some(Spike {
                viewers: 0,
                arrival: Arrival::Poisson {
                    rate_per_s: -2.0,
                    burst: 1,
                },
                second_wave: Some(SecondWave {
                    viewers: 10,
                    after_s: 1.0,
                }),
                ..Spike::default()
            }),
            ..Scenario::default()
        };
        let err = s.validate().unwrap_err().to_string();
        assert!(
            err.contains("spike.second_wave.after_s must be at least 5 s"),
            "{err}"
        );
        assert!(
            err.contains("spike.viewers must be at least 1, got 0"),
            "{err}"
        );
        assert!(err.contains("rate_per_s"), "{err}");
        let empty = Scenario::default().validate().unwrap_err().to_string();
        assert!(empty.contains("nothing to run"), "{empty}");
    }

    #[test]
    fn the_shipped_scenario_files_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let scenario = Scenario::from_file(&path).unwrap();
            scenario
                .validate()
                .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
            for (key, limit) in &scenario.slo {
                crate::slo::check(key, *limit).unwrap();
            }
            seen += 1;
        }
        assert!(seen >= 4, "{seen} scenario files");
    }

    #[test]
    fn unknown_fields_and_bad_types_are_refused() {
        let err = toml::from_str::<Scenario>("[spike]\nviewrs = 10\n").unwrap_err();
        assert!(err.to_string().contains("viewrs"), "{err}");
        let err = toml::from_str::<Scenario>("[spike]\nviewers = \"many\"\n").unwrap_err();
        assert!(err.to_string().contains("viewers"), "{err}");
    }
}
