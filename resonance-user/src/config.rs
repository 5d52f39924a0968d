//! Agent settings: `/etc/resonance/resonance.toml` (optional), every field
//! with a default, command-line flags on top.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Deserializer};

/// Where the config is read from unless `--config` says otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/resonance/resonance.toml";

/// Everything the agent can be told.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// State folder (the history database lives here).
    pub state_dir: PathBuf,
    /// Control socket for `resonance pairs`.
    pub control_socket: PathBuf,
    /// Address the Prometheus endpoint listens on.
    pub metrics_listen: SocketAddr,
    /// How often flows are read and scored.
    #[serde(deserialize_with = "duration")]
    pub tick: Duration,
    /// How often the history is written to disk (a crash loses at most this).
    #[serde(deserialize_with = "duration")]
    pub flush_interval: Duration,
    /// Silence after which a flow's next activity counts as a new interaction.
    #[serde(deserialize_with = "duration")]
    pub idle_gap: Duration,
    /// Score smoothing.
    pub score: ScoreSettings,
    /// Prometheus label cardinality.
    pub metrics: MetricsSettings,
    /// History buckets and retention.
    pub store: StoreSettings,
    /// Rules naming services; the first match wins.
    pub services: Vec<ServiceRule>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            state_dir: PathBuf::from("/var/lib/resonance"),
            control_socket: PathBuf::from("/run/resonance/control.sock"),
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 9977)),
            tick: Duration::from_secs(1),
            flush_interval: Duration::from_secs(5),
            idle_gap: Duration::from_secs(1),
            score: ScoreSettings::default(),
            metrics: MetricsSettings::default(),
            store: StoreSettings::default(),
            services: Vec::new(),
        }
    }
}

/// Score smoothing settings.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ScoreSettings {
    /// Old behaviour loses half its weight every `half_life`.
    #[serde(deserialize_with = "duration")]
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
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsSettings {
    /// Pairs that get their own label set; later ones fold into `_other`.
    pub max_pairs: usize,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        Self { max_pairs: 100 }
    }
}

/// History store settings.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSettings {
    /// Width of fine buckets.
    #[serde(deserialize_with = "duration")]
    pub fine_bucket: Duration,
    /// How long fine buckets are kept before rolling up.
    #[serde(deserialize_with = "duration")]
    pub fine_retention: Duration,
    /// Width of coarse buckets.
    #[serde(deserialize_with = "duration")]
    pub coarse_bucket: Duration,
    /// How long coarse buckets are kept.
    #[serde(deserialize_with = "duration")]
    pub coarse_retention: Duration,
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self {
            fine_bucket: Duration::from_secs(10),
            fine_retention: Duration::from_secs(24 * 3600),
            coarse_bucket: Duration::from_secs(60),
            coarse_retention: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

/// Names the processes matching every given pattern. Patterns are globs
/// where `*` matches any run of characters.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ServiceRule {
    /// The service name to give.
    pub name: String,
    /// cgroup v2 path, e.g. `/system.slice/nginx.service`.
    pub cgroup: Option<String>,
    /// Executable path, e.g. `/usr/sbin/php-fpm*`.
    pub exe: Option<String>,
    /// Kernel comm, e.g. `postgres*`.
    pub comm: Option<String>,
}

/// A config file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Unreadable file.
    #[error("reading config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
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
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_owned(),
                    source,
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
        Ok(config)
    }

    /// The history database inside the state folder.
    pub fn database_path(&self) -> PathBuf {
        self.state_dir.join("resonance.db")
    }
}

fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    humantime::parse_duration(&text).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
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
    fn mistakes_are_reported_with_their_place() {
        let error = Config::parse("flush_intervall = \"2s\"", Path::new("r.toml")).unwrap_err();
        assert!(error.to_string().contains("flush_intervall"), "{error}");
        let error = Config::parse("tick = \"soon\"", Path::new("r.toml")).unwrap_err();
        assert!(error.to_string().contains("r.toml"), "{error}");
        let error = Config::parse("[[services]]\nname = \"x\"", Path::new("r.toml")).unwrap_err();
        assert!(matches!(error, ConfigError::EmptyRule { .. }));
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
