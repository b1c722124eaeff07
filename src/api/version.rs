//! `/version`: the Kubernetes version kedge serves, and what it was built from.

use k8s_openapi::apimachinery::pkg::version::Info;

/// The Kubernetes minor whose API kedge serves (matches the k8s-openapi feature).
pub const KUBERNETES_MAJOR: &str = "1";
pub const KUBERNETES_MINOR: &str = "33";
pub const KUBERNETES_PATCH: &str = "0";

/// `v1.33.0+kedge0.1.0`, in the style of k3s' `v1.33.0+k3s1`.
pub fn git_version() -> String {
    format!(
        "v{KUBERNETES_MAJOR}.{KUBERNETES_MINOR}.{KUBERNETES_PATCH}+kedge{}",
        env!("CARGO_PKG_VERSION")
    )
}

/// Go's name for this machine's architecture, which Kubernetes clients expect.
pub fn platform() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "riscv64" => "riscv64",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        other => other,
    };
    format!("{}/{arch}", std::env::consts::OS)
}

fn build_date() -> String {
    let epoch: i64 = env!("KEDGE_BUILD_EPOCH").parse().unwrap_or(0);
    time::OffsetDateTime::from_unix_timestamp(epoch)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// Everything `kubectl version` and the client libraries read.
pub fn info() -> Info {
    Info {
        major: KUBERNETES_MAJOR.to_string(),
        minor: KUBERNETES_MINOR.to_string(),
        git_version: git_version(),
        git_commit: env!("KEDGE_GIT_COMMIT").to_string(),
        git_tree_state: env!("KEDGE_GIT_TREE_STATE").to_string(),
        build_date: build_date(),
        // Clients show this field verbatim; kedge is built by rustc, not Go.
        go_version: env!("KEDGE_RUSTC_VERSION").to_string(),
        compiler: "rustc".to_string(),
        platform: platform(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_fields_are_filled() {
        let info = info();
        assert_eq!((info.major.as_str(), info.minor.as_str()), ("1", "33"));
        assert!(info.git_version.starts_with("v1.33.0+kedge"));
        assert!(info.build_date.ends_with('Z'), "{}", info.build_date);
        assert!(info.platform.starts_with("linux/"));
        assert!(!info.go_version.is_empty());
    }
}
