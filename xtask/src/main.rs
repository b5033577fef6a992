//! `cargo xtask`: build images, CI checks, benchmarks.
//!
//! `cargo xtask test` is the project's test command (README); `.ci/run` calls it after
//! `cargo xtask lint`.

// The project's `unsafe` lives only in `vmm/src/sys/` (the floor benchmark uses its wrappers).
#![forbid(unsafe_code)]

use std::process::Command;

use anyhow::{bail, Context};

mod bench;
mod bench_linux;
mod bench_measure;
mod bench_relaunch;
mod bench_size;
mod images;

const USAGE: &str = "usage: cargo xtask <lint|test|ci|build-images|bench ...>";

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = args.split_first() else {
        bail!("{USAGE}");
    };
    match cmd.as_str() {
        "lint" => lint(),
        "test" => test(rest),
        "ci" => {
            lint()?;
            test(rest)
        }
        "build-images" => images::build_images(rest),
        "bench" => match rest.split_first() {
            Some((sub, more)) if sub == "relaunch" => bench_relaunch::main(more),
            Some((sub, more)) if sub == "size" => bench_size::main(more),
            Some((sub, more)) if sub == "measure" => bench_measure::main(more),
            Some((sub, more)) if sub == "linux" => bench_linux::main(more),
            _ => bail!("usage: cargo xtask bench <relaunch|size|measure|linux> [options]"),
        },
        other => bail!("unknown xtask command {other:?}; {USAGE}"),
    }
}

/// Runs `program args` in the workspace root and fails if it does.
pub(crate) fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    eprintln!("xtask: $ {program} {}", args.join(" "));
    let status = Command::new(program)
        .args(args)
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("cannot start {program}"))?;
    if !status.success() {
        bail!("{program} {} failed: {status}", args.join(" "));
    }
    Ok(())
}

/// The workspace root (the parent of this crate's manifest directory).
pub(crate) fn workspace_root() -> std::path::PathBuf {
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Formatting, lints and the no_std promise of the core.
fn lint() -> anyhow::Result<()> {
    run("cargo", &["fmt", "--all", "--", "--check"])?;
    run(
        "cargo",
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--locked",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    run(
        "cargo",
        &[
            "build",
            "--locked",
            "-p",
            "relaunch-core",
            "--target",
            "x86_64-unknown-none",
        ],
    )?;
    // The guests are their own cargo project (bare-metal target), outside the workspace.
    let guests = "boot-images/guests/Cargo.toml";
    run(
        "cargo",
        &["fmt", "--manifest-path", guests, "--", "--check"],
    )?;
    run(
        "cargo",
        &[
            "clippy",
            "--locked",
            "--manifest-path",
            guests,
            "--target",
            "x86_64-unknown-none",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    Ok(())
}

/// The test command: builds the boot images (and checks the committed prebuilt bundle is
/// what the sources produce), then runs every test of the workspace.
fn test(extra: &[String]) -> anyhow::Result<()> {
    images::build_images(&["--check".to_string()])?;
    let mut args = vec!["test", "--workspace", "--locked"];
    args.extend(extra.iter().map(String::as_str));
    run("cargo", &args)
}
