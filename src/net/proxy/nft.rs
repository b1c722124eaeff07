//! Talking to nftables: scripts go to `nft -f -` (one netlink transaction: all or
//! nothing), what kedge's table holds comes from `nft list table`. The `nft` binary is a
//! dependency of the node, as for kube-proxy (knftables drives it the same way).

use std::io::Write;
use std::process::{Command, Stdio};

use super::ruleset::{Existing, TABLE};
use super::ProxyError;

/// Runs `nft` with `args`, `stdin` as its input; its stdout.
fn nft(args: &[&str], stdin: Option<&str>) -> Result<String, ProxyError> {
    let what = format!("nft {}", args.join(" "));
    let mut child = Command::new("nft")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| ProxyError::Nft {
            what: what.clone(),
            message: format!("{e} (is nftables installed?)"),
        })?;
    if let Some(mut input) = child.stdin.take() {
        input
            .write_all(stdin.unwrap_or_default().as_bytes())
            .map_err(|e| ProxyError::Nft {
                what: what.clone(),
                message: e.to_string(),
            })?;
    }
    let out = child.wait_with_output().map_err(|e| ProxyError::Nft {
        what: what.clone(),
        message: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(ProxyError::Nft {
            what,
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Applies `script` as one transaction.
pub fn apply(script: &str) -> Result<(), ProxyError> {
    nft(&["-f", "-"], Some(script)).map(drop)
}

/// Checks `script` without applying it (`nft -c`).
pub fn check(script: &str) -> Result<(), ProxyError> {
    nft(&["-c", "-f", "-"], Some(script)).map(drop)
}

/// The chains and sets kedge's table holds now (none if there is no table).
pub fn existing() -> Result<Existing, ProxyError> {
    let listing = match nft(&["list", "table", "ip", TABLE], None) {
        Ok(listing) => listing,
        Err(ProxyError::Nft { message, .. }) if message.contains("No such file") => {
            return Ok(Existing::default())
        }
        Err(e) => return Err(e),
    };
    Ok(parse_listing(&listing))
}

fn parse_listing(listing: &str) -> Existing {
    let mut existing = Existing::default();
    for line in listing.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if let [kind, name, "{"] = words.as_slice() {
            match *kind {
                "chain" => existing.chains.insert(name.to_string()),
                "set" | "map" => existing.sets.insert(name.to_string()),
                _ => false,
            };
        }
    }
    existing
}

/// Deletes kedge's table, if there is one (an uninstall).
pub fn delete_table() -> Result<bool, ProxyError> {
    if existing_table()? {
        nft(&["delete", "table", "ip", TABLE], None)?;
        return Ok(true);
    }
    Ok(false)
}

fn existing_table() -> Result<bool, ProxyError> {
    Ok(nft(&["list", "tables", "ip"], None)?
        .lines()
        .any(|l| l.trim() == format!("table ip {TABLE}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_names_chains_and_sets() {
        let listing = "table ip kedge-proxy {\n\tset cluster-ips {\n\t\ttype ipv4_addr\n\t}\n\n\tmap service-ips {\n\t}\n\n\tchain services {\n\t}\n\n\tchain endpoint-ABCD-default/web/tcp/http__10.42.0.5/80 {\n\t}\n}\n";
        let found = parse_listing(listing);
        assert_eq!(
            found.chains.into_iter().collect::<Vec<_>>(),
            [
                "endpoint-ABCD-default/web/tcp/http__10.42.0.5/80",
                "services"
            ]
        );
        assert_eq!(
            found.sets.into_iter().collect::<Vec<_>>(),
            ["cluster-ips", "service-ips"]
        );
    }
}
