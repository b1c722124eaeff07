//! `kedge images import|ls|rm|pull`: the image store from the command line, usable while a
//! server runs on the same data dir (the store's flock serialises writers and every read
//! re-reads the index).
//!
//! `ls` prints what `crictl images` prints: IMAGE, TAG, IMAGE ID (13 hex chars), SIZE
//! (decimal units as Docker's `HumanSize`), one row per name; `-q` prints full ids only.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use super::{Image, ImageStore, Reference};

#[derive(clap::Args)]
pub struct ImagesArgs {
    /// Folder that holds all state; the store is `<data-dir>/agent/images`
    #[arg(
        long,
        short = 'd',
        env = "KEDGE_DATA_DIR",
        default_value = "/var/lib/kedge",
        global = true
    )]
    pub data_dir: PathBuf,
    /// registries.yaml (k3s format) used by `pull`
    #[arg(
        long,
        env = "KEDGE_REGISTRIES",
        default_value = super::registries::DEFAULT_PATH,
        global = true,
        hide = true
    )]
    pub registries: PathBuf,
    #[command(subcommand)]
    pub command: ImagesCommand,
}

#[derive(clap::Subcommand)]
pub enum ImagesCommand {
    /// Import OCI archives, OCI layout dirs or `docker save` archives (optionally .gz/.zst)
    Import {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// List images
    #[command(alias = "list")]
    Ls {
        /// Only print image ids
        #[arg(short, long)]
        quiet: bool,
    },
    /// Remove images (by name, name@digest or id)
    #[command(alias = "rmi")]
    Rm {
        #[arg(required = true)]
        references: Vec<String>,
    },
    /// Pull an image from its registry (or the mirrors in registries.yaml)
    Pull { reference: String },
}

/// Runs the subcommand; errors are printed as one line and give a non-zero exit code.
pub fn run(args: ImagesArgs) -> ExitCode {
    match execute(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kedge images: {e}");
            ExitCode::FAILURE
        }
    }
}

fn execute(args: ImagesArgs) -> Result<ExitCode, super::ImageError> {
    let store = ImageStore::open(&args.data_dir.join("agent/images"))?
        .with_registries_file(&args.registries);
    let mut out = std::io::stdout().lock();
    match args.command {
        ImagesCommand::Import { files } => {
            for file in files {
                for image in store.import_file(&file)? {
                    let _ = writeln!(out, "imported {} ({})", display_name(&image), image.id);
                }
            }
        }
        ImagesCommand::Ls { quiet } => {
            let images = store.list()?;
            let _ = write!(out, "{}", table(&images, quiet));
        }
        ImagesCommand::Rm { references } => {
            let mut failed = false;
            for reference in references {
                match store.remove(&reference) {
                    Ok(()) => {
                        let _ = writeln!(out, "Deleted: {reference}");
                    }
                    Err(e) => {
                        eprintln!("kedge images: {e}");
                        failed = true;
                    }
                }
            }
            if failed {
                return Ok(ExitCode::FAILURE);
            }
        }
        ImagesCommand::Pull { reference } => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(super::ImageError::io("tokio runtime"))?;
            let image = runtime.block_on(store.pull(&reference, &[]))?;
            let _ = writeln!(out, "pulled {} ({})", display_name(&image), image.id);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn display_name(image: &Image) -> &str {
    image
        .names
        .first()
        .or(image.repo_digests.first())
        .map(String::as_str)
        .unwrap_or("<none>")
}

/// The `ls` output.
fn table(images: &[Image], quiet: bool) -> String {
    if quiet {
        return images.iter().map(|i| format!("{}\n", i.id)).collect();
    }
    let mut rows = vec![[
        "IMAGE".to_string(),
        "TAG".to_string(),
        "IMAGE ID".to_string(),
        "SIZE".to_string(),
    ]];
    for image in images {
        let id: String = image
            .id
            .trim_start_matches("sha256:")
            .chars()
            .take(13)
            .collect();
        let size = human_size(image.size);
        let mut names: Vec<(String, String)> = image
            .names
            .iter()
            .filter_map(|n| Reference::parse(n).ok())
            .map(|r| (r.name(), r.tag.unwrap_or_else(|| "<none>".into())))
            .collect();
        if names.is_empty() {
            // Pulled by digest only: the repository is known, the tag is not.
            names = image
                .repo_digests
                .iter()
                .filter_map(|n| Reference::parse(n).ok())
                .map(|r| (r.name(), "<none>".to_string()))
                .take(1)
                .collect();
        }
        if names.is_empty() {
            names.push(("<none>".into(), "<none>".into()));
        }
        for (name, tag) in names {
            rows.push([name, tag, id.clone(), size.clone()]);
        }
    }
    let mut widths = [0usize; 4];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut text = String::new();
    for row in rows {
        let line = format!(
            "{:w0$}   {:w1$}   {:w2$}   {}",
            row[0],
            row[1],
            row[2],
            row[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        );
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

/// Docker's `units.HumanSize`: decimal units, 4 significant digits (`4.27MB`, `512B`).
fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    let decimals = if value >= 1000.0 {
        0
    } else if value >= 100.0 {
        1
    } else if value >= 10.0 {
        2
    } else {
        3
    };
    let mut number = format!("{value:.decimals$}");
    if number.contains('.') {
        number = number
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string();
    }
    format!("{number}{}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes_like_docker() {
        assert_eq!(human_size(512), "512B");
        assert_eq!(human_size(1000), "1kB");
        assert_eq!(human_size(4_270_000), "4.27MB");
        assert_eq!(human_size(123_456_789), "123.5MB");
        assert_eq!(human_size(1_234_567_890), "1.235GB");
    }
}
