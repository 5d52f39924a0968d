//! A private apt configuration: [`PrivateApt`] owns its sources list, package
//! lists and download cache under xtask's cache folder and passes them to
//! apt-get/apt-cache with `-o`, so it can reach other Debian suites without
//! touching the machine's `/etc/apt`. The mirror is the one the machine
//! already uses ([`Mirrors::from_system`]), since that is the one known to be
//! reachable.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, SystemTime},
};

use anyhow::{Context, Result};

use crate::cmd;

/// Where Debian's own archive keys live (package debian-archive-keyring).
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// Package lists older than this are refreshed before use.
const MAX_LIST_AGE: Duration = Duration::from_secs(24 * 60 * 60);

/// The archive and security mirrors to put in a private sources list.
#[derive(Debug, PartialEq)]
pub struct Mirrors {
    /// Serves the release suites, `-updates` and `-backports`.
    pub archive: String,
    /// Serves the `-security` suites.
    pub security: String,
}

impl Mirrors {
    /// The mirrors named in the machine's apt sources, falling back to
    /// deb.debian.org for whichever is not found.
    pub fn from_system() -> Self {
        let mut texts = Vec::new();
        if let Ok(text) = fs::read_to_string("/etc/apt/sources.list") {
            texts.push(text);
        }
        if let Ok(entries) = fs::read_dir("/etc/apt/sources.list.d") {
            let mut paths: Vec<PathBuf> =
                entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
            paths.sort();
            for path in paths {
                let name = path.to_string_lossy();
                if (name.ends_with(".list") || name.ends_with(".sources"))
                    && let Ok(text) = fs::read_to_string(&path)
                {
                    texts.push(text);
                }
            }
        }
        Self::from_sources(&texts.join("\n"))
    }

    /// Picks the mirrors out of sources in either one-line or deb822 form.
    fn from_sources(text: &str) -> Self {
        let mut archive = None;
        let mut security = None;
        for (uri, suites) in source_entries(text) {
            if !uri.starts_with("http") {
                continue;
            }
            let uri = uri.trim_end_matches('/').to_owned();
            for suite in &suites {
                let debian = ["bookworm", "trixie", "forky", "bullseye"]
                    .iter()
                    .any(|name| suite.starts_with(name));
                if !debian {
                    continue;
                }
                if suite.ends_with("-security") {
                    security.get_or_insert_with(|| uri.clone());
                } else {
                    archive.get_or_insert_with(|| uri.clone());
                }
            }
        }
        Self {
            archive: archive.unwrap_or_else(|| "http://deb.debian.org/debian".to_owned()),
            security: security
                .unwrap_or_else(|| "http://deb.debian.org/debian-security".to_owned()),
        }
    }
}

/// (URI, suites) of every `deb` entry in one-line or deb822 sources text.
fn source_entries(text: &str) -> Vec<(String, Vec<String>)> {
    let mut entries = Vec::new();
    // deb822 stanzas are separated by blank lines; one-line entries stand alone.
    let mut stanza = Stanza::default();
    for line in text.lines().map(str::trim) {
        if line.is_empty() {
            stanza.flush(&mut entries);
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        if let Some(rest) = line.strip_prefix("deb ") {
            let mut words = rest.split_whitespace().peekable();
            if words.peek().is_some_and(|w| w.starts_with('[')) {
                for word in words.by_ref() {
                    if word.ends_with(']') {
                        break;
                    }
                }
            }
            if let (Some(uri), Some(suite)) = (words.next(), words.next()) {
                entries.push((uri.to_owned(), vec![suite.to_owned()]));
            }
        } else if let Some((key, value)) = line.split_once(':') {
            let values = value.split_whitespace().map(str::to_owned);
            match key.trim().to_ascii_lowercase().as_str() {
                "uris" => stanza.uris.extend(values),
                "suites" => stanza.suites.extend(values),
                "types" => stanza.not_deb = !value.split_whitespace().any(|t| t == "deb"),
                _ => {}
            }
        }
    }
    stanza.flush(&mut entries);
    entries
}

/// The fields of one deb822 stanza read so far.
#[derive(Default)]
struct Stanza {
    uris: Vec<String>,
    suites: Vec<String>,
    not_deb: bool,
}

impl Stanza {
    fn flush(&mut self, entries: &mut Vec<(String, Vec<String>)>) {
        let stanza = std::mem::take(self);
        if !stanza.not_deb {
            for uri in stanza.uris {
                entries.push((uri, stanza.suites.clone()));
            }
        }
    }
}

/// What a private apt configuration is for.
#[derive(Clone, Copy, PartialEq)]
pub enum Purpose {
    /// Looking up and downloading packages only: the dpkg status and the
    /// pins are private too, so nothing of the machine's apt state matters.
    Download,
    /// Installing on this machine: the system's dpkg status is used (dpkg
    /// does the install), only sources and lists are private.
    Install,
}

/// One private apt state: sources list, lists and cache under `dir`.
pub struct PrivateApt {
    dir: PathBuf,
    purpose: Purpose,
}

impl PrivateApt {
    /// Writes the sources list for `suites` (archive suites and, for names
    /// ending in `-security`, security suites) under `dir`, and makes sure
    /// the package lists are at most a day old.
    pub fn ensure(
        dir: &Path,
        mirrors: &Mirrors,
        suites: &[&str],
        purpose: Purpose,
    ) -> Result<Self> {
        for sub in ["lists/partial", "cache/archives/partial", "state"] {
            let path = dir.join(sub);
            fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        }
        let status = dir.join("state/status");
        if purpose == Purpose::Download && !status.exists() {
            fs::write(&status, b"").with_context(|| format!("writing {}", status.display()))?;
        }
        let mut sources = String::new();
        for suite in suites {
            let uri = if suite.ends_with("-security") {
                &mirrors.security
            } else {
                &mirrors.archive
            };
            sources.push_str(&format!("deb [signed-by={KEYRING}] {uri} {suite} main\n"));
        }
        let apt = Self {
            dir: dir.to_owned(),
            purpose,
        };
        let list = apt.sources_list();
        let changed = fs::read_to_string(&list).ok().as_deref() != Some(sources.as_str());
        if changed {
            fs::write(&list, &sources).with_context(|| format!("writing {}", list.display()))?;
        }
        let stamp = dir.join("updated");
        let fresh = fs::metadata(&stamp)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age < MAX_LIST_AGE);
        if changed || !fresh {
            match cmd::status(apt.command("apt-get").args(["update", "-q"])) {
                Ok(()) => fs::write(&stamp, b"")
                    .with_context(|| format!("writing {}", stamp.display()))?,
                // Yesterday's lists still name kernels we may have cached.
                Err(e) if !changed && stamp.exists() => {
                    eprintln!(
                        "xtask: warning: refreshing the package lists failed, using the old ones: {e:#}"
                    )
                }
                Err(e) => {
                    return Err(e).context(format!(
                        "apt-get update with the private sources list {} failed",
                        list.display()
                    ));
                }
            }
        }
        Ok(apt)
    }

    fn sources_list(&self) -> PathBuf {
        self.dir.join("sources.list")
    }

    /// `program` (apt-get, apt-cache) set up to use only this private state.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        let option = |key: &str, value: &Path| format!("{key}={}", value.display());
        command
            .arg("-o")
            .arg(option("Dir::Etc::SourceList", &self.sources_list()))
            .arg("-o")
            .arg("Dir::Etc::SourceParts=/dev/null")
            .arg("-o")
            .arg(option("Dir::State::Lists", &self.dir.join("lists")))
            .arg("-o")
            .arg(option("Dir::Cache", &self.dir.join("cache")))
            // apt drops to the `_apt` user, who cannot write in a cache
            // folder owned by whoever runs xtask.
            .args(["-o", "APT::Sandbox::User=root"])
            // Only the package indexes are needed: skip translations and
            // AppStream metadata, which would triple the download.
            .args(["-o", "Acquire::Languages=none"])
            .args([
                "-o",
                "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false",
            ])
            .args([
                "-o",
                "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false",
            ])
            .args([
                "-o",
                "Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false",
            ])
            .args([
                "-o",
                "Acquire::IndexTargets::deb::DEP-11-icons-hidpi::DefaultEnabled=false",
            ])
            .env("DEBIAN_FRONTEND", "noninteractive");
        if self.purpose == Purpose::Download {
            command
                .arg("-o")
                .arg(option("Dir::State", &self.dir.join("state")))
                .arg("-o")
                .arg(option("Dir::State::status", &self.dir.join("state/status")))
                .args(["-o", "Dir::Etc::Preferences=/dev/null"])
                .args(["-o", "Dir::Etc::PreferencesParts=/dev/null"]);
        }
        command
    }
}

/// The machine's Debian codename (`VERSION_CODENAME` in /etc/os-release).
pub fn host_codename() -> Option<String> {
    let text = fs::read_to_string("/etc/os-release").ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("VERSION_CODENAME="))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_come_from_deb822_and_one_line_sources() {
        let deb822 = "Types: deb\n# comment\nURIs: http://mirror.example/debian/\n\
                      Suites: bookworm bookworm-updates\nComponents: main\n\n\
                      Types: deb-src\nURIs: http://src.example/debian\nSuites: bookworm\n\n\
                      Types: deb\nURIs: http://mirror.example/debian-security\n\
                      Suites: bookworm-security\nComponents: main\n";
        assert_eq!(
            Mirrors::from_sources(deb822),
            Mirrors {
                archive: "http://mirror.example/debian".to_owned(),
                security: "http://mirror.example/debian-security".to_owned(),
            }
        );
        let one_line = "deb https://packages.example/apt cloud-sdk main\n\
                        deb [arch=amd64 signed-by=/k.gpg] http://m.example/debian trixie main\n";
        assert_eq!(
            Mirrors::from_sources(one_line),
            Mirrors {
                archive: "http://m.example/debian".to_owned(),
                security: "http://deb.debian.org/debian-security".to_owned(),
            }
        );
        assert_eq!(
            Mirrors::from_sources("").archive,
            "http://deb.debian.org/debian"
        );
    }
}
