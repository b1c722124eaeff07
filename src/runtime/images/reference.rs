//! Image references with Docker Hub's normalisation rules (as `docker` and containerd):
//! `busybox` → `docker.io/library/busybox:latest`, `foo/bar` → `docker.io/foo/bar:latest`,
//! a first component with `.` or `:` (or `localhost`) is a registry host, and a digest
//! (`name@sha256:…`) pins the content (a tag beside it is dropped, as the digest wins).

use super::ImageError;

pub const DEFAULT_REGISTRY: &str = "docker.io";
const DEFAULT_TAG: &str = "latest";

/// A parsed, normalised reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// Registry host (with port), e.g. `docker.io`, `localhost:5000`.
    pub registry: String,
    /// Repository path inside the registry, e.g. `library/busybox`.
    pub repository: String,
    /// The tag; `None` when the reference has a digest.
    pub tag: Option<String>,
    /// `sha256:<hex>`.
    pub digest: Option<String>,
}

impl Reference {
    /// `registry/repository` (no tag, no digest).
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The canonical string: `registry/repository:tag` or `registry/repository@digest`.
    pub fn canonical(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(digest), _) => format!("{}@{digest}", self.name()),
            (None, Some(tag)) => format!("{}:{tag}", self.name()),
            (None, None) => format!("{}:{DEFAULT_TAG}", self.name()),
        }
    }

    pub fn parse(reference: &str) -> Result<Reference, ImageError> {
        let invalid = |reason: &str| ImageError::InvalidReference {
            reference: reference.to_string(),
            reason: reason.to_string(),
        };
        if reference.is_empty() {
            return Err(invalid("empty"));
        }
        if reference.chars().any(|c| c.is_whitespace()) {
            return Err(invalid("contains whitespace"));
        }
        let (rest, digest) = match reference.split_once('@') {
            Some((rest, digest)) => {
                validate_digest(digest).map_err(|reason| invalid(&reason))?;
                (rest, Some(digest.to_string()))
            }
            None => (reference, None),
        };
        // A tag is after the last ':' that follows the last '/' (a ':' before it is a port).
        let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let tag = &rest[last_slash + i + 1..];
                if tag.is_empty()
                    || tag.len() > 128
                    || !tag
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
                    || tag.starts_with(['.', '-'])
                {
                    return Err(invalid("invalid tag"));
                }
                (&rest[..last_slash + i], Some(tag.to_string()))
            }
            None => (rest, None),
        };
        let (registry, repository) = match name.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), path.to_string())
            }
            _ => (DEFAULT_REGISTRY.to_string(), name.to_string()),
        };
        let registry = if registry == "index.docker.io" || registry == "registry-1.docker.io" {
            DEFAULT_REGISTRY.to_string()
        } else {
            registry
        };
        let repository = if registry == DEFAULT_REGISTRY && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        if repository.is_empty()
            || repository.split('/').any(|part| {
                part.is_empty()
                    || !part
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
                    || !part.starts_with(|c: char| c.is_ascii_alphanumeric())
            })
        {
            return Err(invalid(
                "repository must be lowercase letters, digits and separators",
            ));
        }
        let tag = match (&digest, tag) {
            (Some(_), _) => None,
            (None, Some(tag)) => Some(tag),
            (None, None) => Some(DEFAULT_TAG.to_string()),
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }
}

/// Checks `sha256:<64 lowercase hex>` (the only algorithm kedge stores).
pub fn validate_digest(digest: &str) -> Result<(), String> {
    match digest.strip_prefix("sha256:") {
        Some(hex) if hex.len() == 64 && hex.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')) => {
            Ok(())
        }
        _ => Err(format!("{digest:?} is not a sha256 digest")),
    }
}

/// Normalises a reference: `busybox` → `docker.io/library/busybox:latest`,
/// `busybox@sha256:…` → `docker.io/library/busybox@sha256:…`.
pub fn normalize(reference: &str) -> Result<String, ImageError> {
    Ok(Reference::parse(reference)?.canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn docker_hub_rules() {
        for (input, want) in [
            ("busybox", "docker.io/library/busybox:latest"),
            ("busybox:1.35", "docker.io/library/busybox:1.35"),
            ("library/busybox", "docker.io/library/busybox:latest"),
            ("docker.io/busybox", "docker.io/library/busybox:latest"),
            (
                "index.docker.io/library/busybox:1",
                "docker.io/library/busybox:1",
            ),
            ("foo/bar", "docker.io/foo/bar:latest"),
            ("foo/bar/baz:v1", "docker.io/foo/bar/baz:v1"),
            ("quay.io/foo/bar", "quay.io/foo/bar:latest"),
            ("localhost/foo", "localhost/foo:latest"),
            ("localhost:5000/foo:1.0", "localhost:5000/foo:1.0"),
            ("127.0.0.1:5000/a/b:c", "127.0.0.1:5000/a/b:c"),
            ("registry.k8s.io/pause:3.10", "registry.k8s.io/pause:3.10"),
        ] {
            assert_eq!(normalize(input).unwrap(), want, "{input}");
        }
    }

    #[test]
    fn digests() {
        assert_eq!(
            normalize(&format!("busybox@{DIGEST}")).unwrap(),
            format!("docker.io/library/busybox@{DIGEST}")
        );
        assert_eq!(
            normalize(&format!("localhost:5000/x:1@{DIGEST}")).unwrap(),
            format!("localhost:5000/x@{DIGEST}")
        );
        assert!(normalize("busybox@sha256:abc").is_err());
        assert!(normalize("busybox@md5:0123").is_err());
    }

    #[test]
    fn rejects_bad_names() {
        for bad in [
            "",
            "Busybox",
            "busy box",
            "foo//bar",
            "busybox:",
            "busybox:-x",
            "/foo",
        ] {
            assert!(normalize(bad).is_err(), "{bad:?} accepted");
        }
    }
}
