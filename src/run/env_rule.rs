//! Which environment keys a request may set. A request's variables reach the CLI (in docker mode
//! the `docker` client first), so a key that makes a program load code, read another
//! configuration or talk through another server is an attack, not a setting. Single names cannot
//! be listed exhaustively, so whole families are refused by default; an operator who lists the
//! keys a request may set (`RUN_ENV_ALLOW`) replaces the families, but never opens the floor.

use crate::config::{Config, Mode};

/// How a family recognises a key (compared in upper case).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    Prefix(&'static str),
    Suffix(&'static str),
    Exact(&'static str),
}

use Pattern::{Exact, Prefix, Suffix};

impl Pattern {
    /// Whether the upper-cased key `upper` is of this pattern.
    fn matches(self, upper: &str) -> bool {
        match self {
            Prefix(p) => upper.starts_with(p),
            Suffix(s) => upper.ends_with(s),
            Exact(e) => upper == e,
        }
    }

    /// Whether some key starting with `prefix` (upper case) is of this pattern, as far as a
    /// prefix can tell: a suffix pattern is left to the per-request check.
    fn overlaps_prefix(self, prefix: &str) -> bool {
        match self {
            Prefix(p) => prefix.starts_with(p) || p.starts_with(prefix),
            Exact(e) => e.starts_with(prefix),
            Suffix(_) => false,
        }
    }
}

impl std::fmt::Display for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Prefix(p) => write!(f, "{p}*"),
            Suffix(s) => write!(f, "*{s}"),
            Exact(e) => f.write_str(e),
        }
    }
}

/// Keys refused for one reason.
#[derive(Debug, Clone, Copy)]
pub struct Family {
    pub name: &'static str,
    pub why: &'static str,
    pub patterns: &'static [Pattern],
}

impl Family {
    fn matches(&self, upper: &str) -> bool {
        self.patterns.iter().any(|p| p.matches(upper))
    }
}

/// Refused by default in both modes (in docker mode they act inside the container just the same).
pub const FAMILIES: &[Family] = &[
    Family {
        name: "loader",
        why: "the dynamic loader and C library load code or change every process",
        patterns: &[
            Prefix("LD_"),
            Prefix("DYLD_"),
            Prefix("MALLOC_"),
            Prefix("GLIBC_"),
            Prefix("GCONV_"),
        ],
    },
    Family {
        name: "resolver and locale",
        why: "the C library reads host names, resolver options and locale data from them",
        patterns: &[
            Exact("HOSTALIASES"),
            Exact("LOCALDOMAIN"),
            Exact("RES_OPTIONS"),
            Exact("LOCPATH"),
            Exact("NLSPATH"),
        ],
    },
    Family {
        name: "Node.js",
        why: "NODE_OPTIONS loads code, NODE_V8_COVERAGE and NODE_REDIRECT_WARNINGS write files, npm and yarn settings run scripts",
        patterns: &[Prefix("NODE_"), Prefix("NPM_CONFIG_"), Prefix("YARN_")],
    },
    Family {
        name: "language runtimes",
        why: "Python, Perl, Ruby, Java and Go read module paths, start-up files, agents and debug switches from them",
        patterns: &[
            Prefix("PYTHON"),
            Prefix("PERL"),
            Prefix("RUBY"),
            Prefix("GEM_"),
            Prefix("BUNDLE_"),
            Prefix("JAVA_"),
            Prefix("_JAVA_"),
            Prefix("JDK_"),
            Exact("CLASSPATH"),
            Exact("GODEBUG"),
            Exact("GOFLAGS"),
            Exact("GOTOOLCHAIN"),
        ],
    },
    Family {
        name: "git, ssh and gpg",
        why: "GIT_CONFIG_* sets any git option (core.fsmonitor runs a command), GIT_SSH_COMMAND and GIT_ASKPASS run programs",
        patterns: &[Prefix("GIT_"), Prefix("SSH_"), Prefix("GPG"), Prefix("GNUPG")],
    },
    Family {
        name: "TLS",
        why: "OPENSSL_CONF loads shared libraries, CA bundles let another server read the CLI's HTTPS, SSLKEYLOGFILE writes its keys",
        patterns: &[
            Prefix("OPENSSL_"),
            Prefix("SSL_"),
            Prefix("CURL_"),
            Exact("REQUESTS_CA_BUNDLE"),
            Suffix("_CA_BUNDLE"),
            Exact("SSLKEYLOGFILE"),
        ],
    },
    Family {
        name: "proxy",
        why: "they route the CLI's traffic, credentials included, through another server",
        patterns: &[Suffix("_PROXY")],
    },
    Family {
        name: "homes and configuration",
        why: "they say where programs read their configuration, plugins and hooks, or write their files",
        patterns: &[
            Suffix("HOME"),
            Prefix("XDG_"),
            Suffix("CONFIG"),
            Suffix("_CONF"),
            Suffix("_CONFIG_DIR"),
            Suffix("_CONFIG_FILE"),
            Exact("TMPDIR"),
            Exact("TMP"),
            Exact("TEMP"),
        ],
    },
    Family {
        name: "search paths and options",
        why: "they choose which programs, modules and flags a program picks up",
        patterns: &[Suffix("PATH"), Suffix("PRELOAD"), Suffix("OPTIONS"), Suffix("OPTS")],
    },
    Family {
        name: "shell",
        why: "they run code in any shell script the CLI starts",
        patterns: &[
            Prefix("BASH"),
            Prefix("SHELL"),
            Exact("ENV"),
            Exact("ZDOTDIR"),
            Exact("IFS"),
            Exact("PS4"),
            Exact("PROMPT_COMMAND"),
            Exact("GLOBIGNORE"),
        ],
    },
    Family {
        name: "helper programs",
        why: "tools start them on the user's behalf (LESSOPEN runs a command) or read terminal definitions from them",
        patterns: &[
            Exact("EDITOR"),
            Exact("VISUAL"),
            Exact("PAGER"),
            Exact("MANPAGER"),
            Exact("BROWSER"),
            Prefix("LESS"),
            Prefix("TERMINFO"),
            Exact("TERMCAP"),
            Exact("INPUTRC"),
        ],
    },
];

/// Refused by default in docker mode as well.
pub const DOCKER_FAMILIES: &[Family] = &[Family {
    name: "docker client",
    why: "the docker client itself reads them (engine address, TLS, configuration, builds)",
    patterns: &[Prefix("DOCKER_"), Prefix("BUILDKIT_"), Prefix("COMPOSE_")],
}];

/// Refused in local mode even when `RUN_ENV_ALLOW` lists them.
pub const LOCAL_FLOOR: &[Family] = &[Family {
    name: "program and loader",
    why: "they choose the program that runs and the code it loads",
    patterns: &[
        Exact("PATH"),
        Prefix("LD_"),
        Prefix("DYLD_"),
        Exact("GLIBC_TUNABLES"),
        Exact("GCONV_PATH"),
    ],
}];

/// Refused in docker mode even when `RUN_ENV_ALLOW` lists them: the docker client runs with
/// the request's variables in its environment and reads these itself.
pub const DOCKER_FLOOR: &[Family] = &[
    LOCAL_FLOOR[0],
    Family {
        name: "docker client",
        why: "the docker client itself reads them (engine address, configuration, proxies, trust store)",
        patterns: &[
            Prefix("DOCKER_"),
            Prefix("BUILDKIT_"),
            Exact("HOME"),
            Suffix("_PROXY"),
            Exact("SSL_CERT_FILE"),
            Exact("SSL_CERT_DIR"),
        ],
    },
];

fn floor(docker: bool) -> &'static [Family] {
    if docker { DOCKER_FLOOR } else { LOCAL_FLOOR }
}

/// The family that refuses `key` by default, if any.
pub fn default_family(key: &str, docker: bool) -> Option<&'static Family> {
    let upper = key.to_ascii_uppercase();
    let extra: &[Family] = if docker { DOCKER_FAMILIES } else { &[] };
    FAMILIES.iter().chain(extra).find(|f| f.matches(&upper))
}

/// The floor family that refuses `key` whatever `RUN_ENV_ALLOW` says, if any.
pub fn floor_family(key: &str, docker: bool) -> Option<&'static Family> {
    let upper = key.to_ascii_uppercase();
    floor(docker).iter().find(|f| f.matches(&upper))
}

/// For start-up: the floor pattern a `RUN_ENV_ALLOW` entry (a name or `PREFIX*`) would open.
pub fn floor_conflict(entry: &str, docker: bool) -> Option<(Pattern, &'static Family)> {
    let upper = entry.to_ascii_uppercase();
    floor(docker).iter().find_map(|family| {
        family
            .patterns
            .iter()
            .find(|p| match upper.strip_suffix('*') {
                Some(prefix) => p.overlaps_prefix(prefix),
                None => p.matches(&upper),
            })
            .map(|p| (*p, family))
    })
}

/// Whether a `RUN_ENV_ALLOW` entry admits `key` (names are case-sensitive, as the kernel's are).
fn allows(entry: &str, key: &str) -> bool {
    match entry.strip_suffix('*') {
        Some(prefix) => key.starts_with(prefix),
        None => key == entry,
    }
}

/// Whether a request may set `key` (already a valid name). The error is for the client.
pub fn check(key: &str, config: &Config) -> Result<(), String> {
    let docker = matches!(config.mode, Mode::Docker(_));
    if let Some(f) = floor_family(key, docker) {
        return Err(format!(
            "env key '{key}' may never be set by a request, not even through RUN_ENV_ALLOW ({}: {})",
            f.name, f.why
        ));
    }
    if !config.env_allow.is_empty() {
        if config.env_allow.iter().any(|entry| allows(entry, key)) {
            return Ok(());
        }
        return Err(format!(
            "env key '{key}' is not in RUN_ENV_ALLOW, the operator's list of keys a request may set"
        ));
    }
    match default_family(key, docker) {
        Some(f) => Err(format!(
            "env key '{key}' is refused by default (family '{}': {}); the operator can allow it in RUN_ENV_ALLOW",
            f.name, f.why
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(docker: bool, allow: &str) -> Config {
        let mut vars = vec![("RUN_ENV_ALLOW".to_string(), allow.to_string())];
        if docker {
            vars.push(("CODEX_DOCKER_IMAGE".into(), "img".into()));
            vars.push(("DOCKER_BIN".into(), "/bin/sh".into()));
        }
        Config::from_vars(vars).unwrap()
    }

    /// Keys of the security report and of each family, refused by default in both modes.
    const REFUSED: &[&str] = &[
        "LD_PRELOAD",
        "ld_library_path",
        "LD_AUDIT",
        "DYLD_INSERT_LIBRARIES",
        "MALLOC_CHECK_",
        "GLIBC_TUNABLES",
        "GCONV_PATH",
        "HOSTALIASES",
        "LOCALDOMAIN",
        "RES_OPTIONS",
        "LOCPATH",
        "NLSPATH",
        "NODE_OPTIONS",
        "NODE_V8_COVERAGE",
        "NODE_REDIRECT_WARNINGS",
        "NODE_EXTRA_CA_CERTS",
        "node_path",
        "NPM_CONFIG_PREFIX",
        "npm_config_script_shell",
        "YARN_RC_FILENAME",
        "PYTHONPATH",
        "PYTHONSTARTUP",
        "PYTHONHOME",
        "PERL5LIB",
        "PERL5OPT",
        "RUBYOPT",
        "RUBYLIB",
        "GEM_HOME",
        "BUNDLE_GEMFILE",
        "JAVA_TOOL_OPTIONS",
        "_JAVA_OPTIONS",
        "JDK_JAVA_OPTIONS",
        "CLASSPATH",
        "GODEBUG",
        "GIT_CONFIG_COUNT",
        "GIT_CONFIG_KEY_0",
        "GIT_CONFIG_VALUE_0",
        "GIT_CONFIG_PARAMETERS",
        "GIT_SSH_COMMAND",
        "GIT_ASKPASS",
        "GIT_EXEC_PATH",
        "SSH_AUTH_SOCK",
        "SSH_ASKPASS",
        "GPG_AGENT_INFO",
        "GNUPGHOME",
        "OPENSSL_CONF",
        "OPENSSL_MODULES",
        "OPENSSL_ENGINES",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "CURL_CA_BUNDLE",
        "REQUESTS_CA_BUNDLE",
        "AWS_CA_BUNDLE",
        "SSLKEYLOGFILE",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "NO_PROXY",
        "no_proxy",
        "HOME",
        "home",
        "CODEX_HOME",
        "CLAUDE_HOME",
        "JAVA_HOME",
        "XDG_CONFIG_HOME",
        "XDG_DATA_DIRS",
        "XDG_RUNTIME_DIR",
        "KUBECONFIG",
        "BOTO_CONFIG",
        "CLAUDE_CONFIG_DIR",
        "AWS_CONFIG_FILE",
        "WGET_CONF",
        "TMPDIR",
        "PATH",
        "Path",
        "CDPATH",
        "MANPATH",
        "MY_TOOL_PATH",
        "LIBC_PRELOAD",
        "RES_OPTIONS",
        "MAVEN_OPTS",
        "SHELLOPTS",
        "BASHOPTS",
        "SHELL",
        "BASH_ENV",
        "BASH_XTRACEFD",
        "ENV",
        "ZDOTDIR",
        "IFS",
        "PS4",
        "PROMPT_COMMAND",
        "GLOBIGNORE",
        "EDITOR",
        "VISUAL",
        "PAGER",
        "MANPAGER",
        "BROWSER",
        "LESSOPEN",
        "LESSKEY",
        "TERMINFO",
        "TERMINFO_DIRS",
        "TERMCAP",
        "INPUTRC",
    ];

    /// Keys CLIs are configured with: never refused by default.
    const PASSED: &[&str] = &[
        "OPENAI_API_KEY",
        "ANTHROPIC_API_KEY",
        "LITELLM_API_KEY",
        "LITELLM_MODEL",
        "LITELLM_BASE_URL",
        "OPENAI_BASE_URL",
        "ANTHROPIC_MODEL",
        "MY_FLAG",
        "CLIGATE_TEST_VAR",
        "LANG",
        "LC_ALL",
        "TERM",
        "TZ",
        "NO_COLOR",
        "CI",
        "RUST_LOG",
        "GOOGLE_API_KEY",
        "DEBUG",
        "_A1",
    ];

    #[test]
    fn families_refuse_loader_runtime_and_tool_configuration_in_both_modes() {
        for docker in [false, true] {
            let c = config(docker, "");
            for key in REFUSED {
                let err = check(key, &c).unwrap_err();
                assert!(err.contains(key) && err.contains("RUN_ENV_ALLOW"), "{key}: {err}");
            }
            for key in PASSED {
                assert_eq!(check(key, &c), Ok(()), "{key} (docker: {docker})");
            }
        }
    }

    #[test]
    fn refusals_name_the_family() {
        let c = config(false, "");
        let err = check("GIT_CONFIG_COUNT", &c).unwrap_err();
        assert!(err.contains("git, ssh and gpg") && err.contains("fsmonitor"), "{err}");
        let err = check("OPENSSL_CONF", &c).unwrap_err();
        assert!(err.contains("'TLS'") && err.contains("refused by default"), "{err}");
        let err = check("https_proxy", &c).unwrap_err();
        assert!(err.contains("'proxy'"), "{err}");
    }

    #[test]
    fn docker_client_keys_are_refused_in_docker_mode_only() {
        for key in ["DOCKER_HOST", "docker_config", "BUILDKIT_PROGRESS", "COMPOSE_FILE"] {
            assert!(check(key, &config(true, "")).is_err(), "{key}");
        }
        for key in ["DOCKER_HOST_LABEL", "BUILDKIT_X", "COMPOSE_PROJECT_NAME"] {
            assert_eq!(check(key, &config(false, "")), Ok(()), "{key}");
        }
        assert!(default_family("DOCKER_HOST", true).is_some_and(|f| f.name == "docker client"));
    }

    #[test]
    fn the_allow_list_replaces_the_families() {
        let c = config(false, "OPENSSL_CONF,GIT_CONFIG_*,NODE_V8_COVERAGE,HOME,MY_*");
        for key in [
            "OPENSSL_CONF",
            "GIT_CONFIG_COUNT",
            "GIT_CONFIG_KEY_0",
            "NODE_V8_COVERAGE",
            "HOME",
            "MY_FLAG",
        ] {
            assert_eq!(check(key, &c), Ok(()), "{key}");
        }
        for key in [
            "OPENAI_API_KEY",
            "openssl_conf",
            "GIT_SSH_COMMAND",
            "NODE_OPTIONS",
            "MY",
            "XMY_A",
        ] {
            let err = check(key, &c).unwrap_err();
            assert!(
                err.contains("not in RUN_ENV_ALLOW") && err.contains(key),
                "{key}: {err}"
            );
        }
    }

    #[test]
    fn the_floor_stays_shut_whatever_the_allow_list_says() {
        // An allow-list cannot name floor keys (config refuses that), but a pattern may reach one.
        let c = config(false, "MY_*,HTTPS_*");
        assert_eq!(
            check("HTTPS_PROXY", &c),
            Ok(()),
            "local mode: proxies are not in the floor"
        );
        let c = config(true, "MY_*,HTTPS_*");
        for key in ["HTTPS_PROXY", "MY_NO_PROXY"] {
            let err = check(key, &c).unwrap_err();
            assert!(
                err.contains("may never be set") && err.contains("RUN_ENV_ALLOW"),
                "{key}: {err}"
            );
        }
        for docker in [false, true] {
            for key in [
                "PATH",
                "path",
                "LD_PRELOAD",
                "DYLD_LIBRARY_PATH",
                "GLIBC_TUNABLES",
                "GCONV_PATH",
            ] {
                let err = check(key, &config(docker, "")).unwrap_err();
                assert!(err.contains("may never be set"), "{key}: {err}");
            }
        }
        for key in ["DOCKER_HOST", "BUILDKIT_HOST", "HOME", "HTTP_PROXY", "SSL_CERT_FILE"] {
            let err = check(key, &config(true, "")).unwrap_err();
            assert!(err.contains("may never be set"), "{key}: {err}");
        }
    }

    #[test]
    fn floor_conflicts_of_allow_list_entries() {
        for (entry, docker) in [
            ("PATH", false),
            ("path", false),
            ("LD_PRELOAD", false),
            ("LD_*", false),
            ("L*", false),
            ("PA*", false),
            ("DYLD_*", false),
            ("GLIBC_TUNABLES", false),
            ("DOCKER_HOST", true),
            ("DOCKER_*", true),
            ("D*", true),
            ("BUILDKIT_HOST", true),
            ("HOME", true),
            ("HO*", true),
            ("HTTPS_PROXY", true),
            ("no_proxy", true),
            ("SSL_CERT_FILE", true),
            ("LD_*", true),
        ] {
            assert!(floor_conflict(entry, docker).is_some(), "{entry} (docker: {docker})");
        }
        for (entry, docker) in [
            ("HOME", false),
            ("HTTPS_PROXY", false),
            ("DOCKER_HOST", false),
            ("MY_*", true),
            ("OPENSSL_CONF", true),
            ("GIT_*", true),
            ("LITELLM_*", true),
            ("PATHS_TO_NOTHING", false),
        ] {
            assert!(floor_conflict(entry, docker).is_none(), "{entry} (docker: {docker})");
        }
        let (pattern, family) = floor_conflict("L*", false).unwrap();
        assert_eq!(
            (pattern.to_string(), family.name),
            ("LD_*".to_string(), "program and loader")
        );
    }
}
