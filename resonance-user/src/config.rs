//! Agent settings: `/etc/resonance/resonance.toml` (optional), every field
//! with a default, command-line flags on top.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::{predict::retrain::RetrainConfig, store::StoreConfig};

/// Where the config is read from unless `--config` says otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/resonance/resonance.toml";

/// Where the agent answers `resonance pairs` unless configured otherwise.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/resonance/control.sock";

/// Everything the agent can be told.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// State folder (the history database lives here).
    pub state_dir: PathBuf,
    /// Control socket for `resonance pairs`.
    pub control_socket: PathBuf,
    /// Address the Prometheus endpoint listens on.
    pub metrics_listen: SocketAddr,
    /// How often flows are read and scored.
    #[serde(
        deserialize_with = "duration",
        serialize_with = "crate::units::write_duration"
    )]
    pub tick: Duration,
    /// How often the history is written to disk (a crash loses at most this).
    #[serde(
        deserialize_with = "duration",
        serialize_with = "crate::units::write_duration"
    )]
    pub flush_interval: Duration,
    /// Silence after which a flow's next activity counts as a new interaction.
    #[serde(
        deserialize_with = "duration",
        serialize_with = "crate::units::write_duration"
    )]
    pub idle_gap: Duration,
    /// Whether the probes time how long data waits in pipes and socket
    /// requests wait for answers. Off spares every followed message one
    /// kernel hash lookup (docs/observer.md gives what that is worth);
    /// pairs then have no latency, and scores rank it as middling.
    pub measure_latency: bool,
    /// Score smoothing.
    pub score: ScoreSettings,
    /// Prometheus label cardinality.
    pub metrics: MetricsSettings,
    /// History buckets and retention.
    pub store: StoreConfig,
    /// Rules naming services; the first match wins.
    pub services: Vec<ServiceRule>,
    /// The channel broker.
    pub broker: BrokerSettings,
    /// Retraining and persistence of the broker's model.
    pub predict: PredictSettings,
    /// Growing the pipes of programs that block on them.
    pub grow: GrowSettings,
    /// Whether processes running the agent's own executable (the
    /// `resonance` CLI piped into `jq`, `head`, ...) count as pairs.
    pub include_own_processes: bool,
    /// Whether the agent drops every capability it no longer needs once
    /// its probes are attached and its sockets listen.
    pub drop_capabilities: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            state_dir: PathBuf::from(crate::store::DEFAULT_STATE_DIR),
            control_socket: PathBuf::from(DEFAULT_CONTROL_SOCKET),
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 9977)),
            tick: Duration::from_secs(1),
            flush_interval: Duration::from_secs(5),
            idle_gap: Duration::from_secs(1),
            measure_latency: true,
            score: ScoreSettings::default(),
            metrics: MetricsSettings::default(),
            store: StoreConfig::default(),
            services: Vec::new(),
            broker: BrokerSettings::default(),
            predict: PredictSettings::default(),
            grow: GrowSettings::default(),
            include_own_processes: false,
            drop_capabilities: true,
        }
    }
}

/// Growing the pipes of unmodified programs in place (`[grow]`; see
/// `crate::grow`): which services, how large, how much memory in all.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct GrowSettings {
    /// Globs of the services whose pipes may be grown, as writer or as
    /// reader (`*` for every service); none by default.
    pub services: Vec<String>,
    /// Largest capacity a pipe is grown to, bytes (never past
    /// `/proc/sys/fs/pipe-max-size` either).
    pub max_size: u64,
    /// Pipe memory the agent's growth may add host-wide, bytes.
    pub memory_budget: u64,
}

impl Default for GrowSettings {
    fn default() -> Self {
        Self {
            services: Vec::new(),
            max_size: 1 << 20,
            memory_budget: 64 << 20,
        }
    }
}

/// Retraining and persistence of the broker's prediction model
/// (`[predict]`; see `crate::predict::retrain` for the rules).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PredictSettings {
    /// Whether the model is retrained at all.
    pub retrain: bool,
    /// Scheduled retraining period (`0s`: on drift only).
    #[serde(
        deserialize_with = "duration",
        serialize_with = "crate::units::write_duration"
    )]
    pub retrain_every: Duration,
    /// History a scheduled candidate learns.
    #[serde(
        deserialize_with = "duration",
        serialize_with = "crate::units::write_duration"
    )]
    pub retrain_window: Duration,
    /// How long candidate and serving model are compared before a swap.
    #[serde(
        deserialize_with = "duration",
        serialize_with = "crate::units::write_duration"
    )]
    pub holdout: Duration,
    /// Span of the rolling hit rate of the opens (and the history a
    /// drift-triggered candidate learns).
    #[serde(
        deserialize_with = "duration",
        serialize_with = "crate::units::write_duration"
    )]
    pub drift_window: Duration,
    /// Fall of the rolling hit rate below its usual level that is a drift.
    pub drift_margin: f64,
    /// Opens the rolling window needs before it can signal a drift.
    pub drift_min_opens: usize,
    /// How often the model is saved to the state folder (also on stop).
    #[serde(
        deserialize_with = "duration",
        serialize_with = "crate::units::write_duration"
    )]
    pub save_every: Duration,
    /// Whether the model learns the interaction starts the probes observe,
    /// not only the broker's opens (off only to measure what they add).
    pub observed_starts: bool,
}

impl Default for PredictSettings {
    fn default() -> Self {
        let retrain = RetrainConfig::default();
        Self {
            retrain: true,
            retrain_every: Duration::from_nanos(retrain.every_ns),
            retrain_window: Duration::from_nanos(retrain.window_ns),
            holdout: Duration::from_nanos(retrain.holdout_ns),
            drift_window: Duration::from_nanos(retrain.drift_window_ns),
            drift_margin: retrain.drift_margin,
            drift_min_opens: retrain.drift_min_samples,
            save_every: Duration::from_secs(300),
            observed_starts: true,
        }
    }
}

impl PredictSettings {
    /// The retraining rules these settings describe.
    pub fn retrain_config(&self) -> RetrainConfig {
        let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        RetrainConfig {
            every_ns: ns(self.retrain_every),
            window_ns: ns(self.retrain_window),
            holdout_ns: ns(self.holdout).max(1),
            drift_window_ns: ns(self.drift_window).max(1),
            drift_margin: self.drift_margin,
            drift_min_samples: self.drift_min_opens,
            ..RetrainConfig::default()
        }
    }
}

/// The channel broker (`[broker]`): where it listens, how long prepared
/// channels live, budgets and who may do what.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerSettings {
    /// Whether `resonance run` serves the broker.
    pub enabled: bool,
    /// The broker's Unix socket.
    pub socket: PathBuf,
    /// The socket file's mode, octal (e.g. `"0660"`).
    pub mode: String,
    /// The socket file's group (name or number); unset keeps root's.
    pub group: Option<String>,
    /// How long a pre-created channel waits to be claimed.
    #[serde(
        deserialize_with = "duration",
        serialize_with = "crate::units::write_duration"
    )]
    pub ttl: Duration,
    /// How often predictions are turned into channels.
    #[serde(
        deserialize_with = "duration",
        serialize_with = "crate::units::write_duration"
    )]
    pub prepare_interval: Duration,
    /// Probability (within `ttl`) from which a pair always gets a channel
    /// ahead of time: the waste budget's ceiling (see `crate::plan`); above
    /// 1 disables pre-creation.
    pub threshold: f64,
    /// Lowest the waste budget takes the threshold.
    pub threshold_min: f64,
    /// Highest a pair's own threshold goes when its channels go to waste.
    pub threshold_max: f64,
    /// Share of prepared channels allowed to expire unused; the threshold
    /// moves to hold it (0: the threshold stays fixed).
    pub waste_budget: f64,
    /// Idle pre-created channels in total.
    pub max_idle: usize,
    /// Idle pre-created channels per pair.
    pub max_idle_per_pair: usize,
    /// Descriptors of idle channels held by clients.
    pub max_fds: usize,
    /// Kernel buffer memory of idle channels, bytes.
    pub max_buffer_memory: u64,
    /// Channel capacity when the traffic's burst is unknown, bytes.
    pub default_capacity: u32,
    /// Whether ends are handed out with `O_NONBLOCK`.
    pub nonblocking: bool,
    /// Requester → service pairs whose feedback and declared wants are
    /// kept; beyond it the least recently updated pair is forgotten.
    pub max_pairs: usize,
    /// Pairs (and denied services) that get their own metric labels; later
    /// ones fold into `_other`, as `metrics.max_pairs` does for the
    /// agent's pair metrics.
    pub metric_pairs: usize,
    /// Who may register or open which service, beyond the defaults (a
    /// service is registered by one uid at a time; opening is allowed
    /// within the registrant's uid).
    pub rules: Vec<PolicyRule>,
}

impl Default for BrokerSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            socket: PathBuf::from("/run/resonance/broker.sock"),
            mode: "0660".to_owned(),
            group: None,
            ttl: Duration::from_nanos(crate::plan::DEFAULT_TTL_NS),
            prepare_interval: Duration::from_millis(5),
            threshold: crate::plan::DEFAULT_THRESHOLD,
            threshold_min: crate::predict::budget::BudgetSettings::default().floor,
            threshold_max: crate::plan::DEFAULT_THRESHOLD_MAX,
            waste_budget: crate::predict::budget::BudgetSettings::default().target,
            max_idle: 256,
            max_idle_per_pair: 4,
            max_fds: 1024,
            max_buffer_memory: 64 << 20,
            default_capacity: 64 << 10,
            nonblocking: false,
            max_pairs: 1024,
            metric_pairs: 100,
            rules: Vec::new(),
        }
    }
}

/// What a policy rule allows.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PolicyAction {
    /// Registering (serving) the service.
    Register,
    /// Opening channels to the service.
    Open,
}

/// Allows `action` on services matching `service` (a glob) to processes
/// matching every given credential. For `register`, once any rule names a
/// service, only matching processes may register it.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PolicyRule {
    /// What is allowed.
    pub action: PolicyAction,
    /// Service name glob (`*` matches any run of characters).
    pub service: String,
    /// User id.
    pub uid: Option<u32>,
    /// Group id.
    pub gid: Option<u32>,
    /// systemd unit, e.g. `web.service`.
    pub unit: Option<String>,
}

/// Score smoothing settings.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ScoreSettings {
    /// Old behaviour loses half its weight every `half_life`.
    #[serde(
        deserialize_with = "duration",
        serialize_with = "crate::units::write_duration"
    )]
    pub half_life: Duration,
}

impl Default for ScoreSettings {
    fn default() -> Self {
        Self {
            half_life: Duration::from_secs(300),
        }
    }
}

/// Prometheus settings.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsSettings {
    /// Pairs that get their own label set; later ones fold into `_other`.
    pub max_pairs: usize,
    /// Prometheus exporter web config (TLS, basic auth, headers), the
    /// format of node_exporter's `--web.config.file`; unset: plain HTTP.
    pub web_config_file: Option<PathBuf>,
    /// Connections the endpoint keeps open at once; at the cap the oldest
    /// idle one makes room for a newcomer.
    pub max_connections: usize,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        Self {
            max_pairs: 100,
            web_config_file: None,
            max_connections: 64,
        }
    }
}

pub use crate::aggregate::ServiceRule;

/// A config file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Unreadable file. The OS error is part of the message and not a
    /// `source`, so a report of the whole chain says it once.
    #[error("reading config {path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// Invalid TOML or unknown settings.
    #[error("config {path} is invalid: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said (with line and column).
        message: String,
    },
    /// A rule that can never match.
    #[error("config {path}: service rule {name:?} has no cgroup, exe or comm pattern")]
    EmptyRule {
        /// The file.
        path: PathBuf,
        /// The rule's name.
        name: String,
    },
}

impl Config {
    /// Reads `path`; a missing file at the default location means defaults.
    pub fn load(path: &Path, explicit: bool) -> Result<Self, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound && !explicit => {
                return Ok(Self::default());
            }
            Err(error) => {
                return Err(ConfigError::Read {
                    path: path.to_owned(),
                    error,
                });
            }
        };
        Self::parse(&text, path)
    }

    /// Parses config text (`path` is for messages).
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        if let Some(rule) = config
            .services
            .iter()
            .find(|r| r.cgroup.is_none() && r.exe.is_none() && r.comm.is_none())
        {
            return Err(ConfigError::EmptyRule {
                path: path.to_owned(),
                name: rule.name.clone(),
            });
        }
        if !(0.0..1.0).contains(&config.predict.drift_margin) {
            return Err(ConfigError::Parse {
                path: path.to_owned(),
                message: format!(
                    "predict.drift_margin {} must be in [0, 1)",
                    config.predict.drift_margin
                ),
            });
        }
        if config.predict.holdout.is_zero() || config.predict.save_every.is_zero() {
            return Err(ConfigError::Parse {
                path: path.to_owned(),
                message: "predict.holdout and predict.save_every must be positive".to_owned(),
            });
        }
        if u32::from_str_radix(&config.broker.mode, 8).is_err() {
            return Err(ConfigError::Parse {
                path: path.to_owned(),
                message: format!("broker.mode {:?} is not an octal mode", config.broker.mode),
            });
        }
        Ok(config)
    }

    /// The history database inside the state folder.
    pub fn database_path(&self) -> PathBuf {
        self.state_dir.join(crate::store::DB_FILE_NAME)
    }
}

pub use crate::units::{duration, parse_duration};

#[cfg(test)]
mod tests {
    #[test]
    fn a_bad_duration_names_the_value_and_the_form() {
        let error = super::Config::parse("tick = \"banana\"\n", std::path::Path::new("t.toml"))
            .expect_err("banana is no duration")
            .to_string();
        assert!(
            error.contains("\"banana\"") && error.contains("such as 250ms, 5s, 2m or 1h30m"),
            "{error}"
        );
    }

    use super::*;

    #[test]
    fn an_empty_file_gives_the_defaults() {
        assert_eq!(
            Config::parse("", Path::new("x")).unwrap(),
            Config::default()
        );
    }

    #[test]
    fn settings_and_rules_are_read() {
        let text = r#"
            state_dir = "/tmp/r"
            flush_interval = "2s"
            [metrics]
            max_pairs = 7
            [[services]]
            name = "web"
            cgroup = "/system.slice/nginx*.service"
        "#;
        let config = Config::parse(text, Path::new("x")).unwrap();
        assert_eq!(config.state_dir, PathBuf::from("/tmp/r"));
        assert_eq!(config.flush_interval, Duration::from_secs(2));
        assert_eq!(config.metrics.max_pairs, 7);
        assert_eq!(config.services[0].name, "web");
    }

    #[test]
    fn predict_settings_are_read_and_checked() {
        let text = r#"
            [predict]
            retrain_every = "2m"
            holdout = "10s"
            drift_margin = 0.2
        "#;
        let config = Config::parse(text, Path::new("x")).unwrap();
        let retrain = config.predict.retrain_config();
        assert_eq!(retrain.every_ns, 120_000_000_000);
        assert_eq!(retrain.holdout_ns, 10_000_000_000);
        assert_eq!(retrain.drift_margin, 0.2);
        assert_eq!(
            retrain.window_ns,
            RetrainConfig::default().window_ns,
            "unset keys keep their defaults"
        );
        let error =
            Config::parse("[predict]\ndrift_margin = 1.5", Path::new("r.toml")).unwrap_err();
        assert!(error.to_string().contains("drift_margin"), "{error}");
        let error = Config::parse("[predict]\nholdout = \"0s\"", Path::new("r.toml")).unwrap_err();
        assert!(error.to_string().contains("holdout"), "{error}");
    }

    #[test]
    fn mistakes_are_reported_with_their_place() {
        let error = Config::parse("flush_intervall = \"2s\"", Path::new("r.toml")).unwrap_err();
        assert!(error.to_string().contains("flush_intervall"), "{error}");
        let error = Config::parse("tick = \"soon\"", Path::new("r.toml")).unwrap_err();
        assert!(error.to_string().contains("r.toml"), "{error}");
        let error = Config::parse("[[services]]\nname = \"x\"", Path::new("r.toml")).unwrap_err();
        assert!(matches!(error, ConfigError::EmptyRule { .. }));
    }

    /// The file the package installs as `/etc/resonance/resonance.toml`.
    const PACKAGED: &str = include_str!("../../packaging/resonance.toml");

    /// The packaged file with its `#key = value` lines uncommented (prose
    /// and examples keep their `# `).
    fn uncommented(text: &str) -> String {
        let is_setting = |rest: &str| {
            rest.split_once(" = ").is_some_and(|(key, _)| {
                !key.is_empty() && key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
            })
        };
        text.lines()
            .map(|line| match line.strip_prefix('#') {
                Some(rest) if is_setting(rest) => rest,
                _ => line,
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Keys of `defaults` that `shown` lacks, as dotted paths; an empty list
    /// (`services`, `broker.rules`) counts as shown when the text has an
    /// example of it (`# [[services]]`).
    fn keys_not_shown(
        prefix: &str,
        defaults: &toml::Table,
        shown: &toml::Table,
        text: &str,
    ) -> Vec<String> {
        let mut missing = Vec::new();
        for (key, value) in defaults {
            let path = format!("{prefix}{key}");
            match (value, shown.get(key)) {
                (toml::Value::Table(inner), Some(toml::Value::Table(shown_inner))) => {
                    missing.extend(keys_not_shown(
                        &format!("{path}."),
                        inner,
                        shown_inner,
                        text,
                    ));
                }
                (toml::Value::Array(items), None)
                    if items.is_empty() && text.contains(&format!("# [[{path}]]")) => {}
                (_, None) => missing.push(path),
                _ => {}
            }
        }
        missing
    }

    #[test]
    fn the_packaged_config_shows_every_key_at_its_default() {
        let path = Path::new("packaging/resonance.toml");
        assert_eq!(
            Config::parse(PACKAGED, path).unwrap(),
            Config::default(),
            "as installed, every setting is commented out"
        );
        let text = uncommented(PACKAGED);
        assert_eq!(
            Config::parse(&text, path).unwrap(),
            Config::default(),
            "a value shown is not the default"
        );
        let defaults = toml::Table::try_from(Config::default()).unwrap();
        let shown: toml::Table = toml::from_str(&text).unwrap();
        let missing = keys_not_shown("", &defaults, &shown, PACKAGED);
        assert!(
            missing.is_empty(),
            "keys the packaged config does not show: {missing:?}"
        );
        assert!(
            PACKAGED.contains("# group = "),
            "broker.group (unset by default) is shown as an example"
        );
    }

    #[test]
    fn a_missing_default_file_means_defaults_but_a_missing_explicit_one_is_an_error() {
        let missing = Path::new("/nonexistent/resonance.toml");
        assert!(Config::load(missing, false).is_ok());
        assert!(matches!(
            Config::load(missing, true),
            Err(ConfigError::Read { .. })
        ));
    }
}
