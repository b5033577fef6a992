//! `cargo xtask build-images [--check] [--update-prebuilt]`: builds relaunch's test guests
//! (`boot-images/guests`, `x86_64-unknown-none`, release) and packs each into
//! `boot-images/out/<name>.igvm` with `relaunch_boot_images::pack`.
//!
//! - `--check`: fail unless the fresh `hello.igvm` and its ELF are byte-identical to the
//!   committed `boot-images/prebuilt/hello.{igvm,elf}` (the build is reproducible: fixed flags, no
//!   timestamps, paths remapped).
//! - `--update-prebuilt`: copy the fresh `hello.igvm` and its ELF over the committed
//!   `boot-images/prebuilt/hello.{igvm,elf}`.
//!
//! The guests' compiler flags are passed as `CARGO_ENCODED_RUSTFLAGS`, so a `RUSTFLAGS`
//! in the environment cannot change the images.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

use crate::workspace_root;

/// The guests, in build order.
pub const GUESTS: [&str; 7] = [
    "hello",
    "reboot-loop",
    "smp",
    "junk",
    "sevinfo",
    "fuki",
    "irq",
];

/// `cargo xtask build-images [--check] [--update-prebuilt]`.
pub fn build_images(args: &[String]) -> anyhow::Result<()> {
    let mut check = false;
    let mut update = false;
    for a in args {
        match a.as_str() {
            "--check" => check = true,
            "--update-prebuilt" => update = true,
            other => bail!("build-images: unknown option {other:?} (--check, --update-prebuilt)"),
        }
    }
    let root = workspace_root();
    let out = root.join("boot-images/out");
    let written = build_and_pack(&root, &out)?;
    for (name, path, len) in &written {
        eprintln!("xtask: {name:12} {len:7} bytes  {}", path.display());
    }
    // The committed pair: the hello ELF and the bundle packed from it.
    let pairs = [
        (
            out.join("hello.igvm"),
            root.join("boot-images/prebuilt/hello.igvm"),
        ),
        (
            elf_path(&target_dir(&root), "hello"),
            root.join("boot-images/prebuilt/hello.elf"),
        ),
    ];
    for (fresh, prebuilt) in &pairs {
        if update {
            std::fs::create_dir_all(prebuilt.parent().unwrap_or(&root))?;
            std::fs::copy(fresh, prebuilt)
                .with_context(|| format!("cannot write {}", prebuilt.display()))?;
            eprintln!("xtask: updated {}", prebuilt.display());
        }
        if check {
            let a = std::fs::read(fresh)?;
            let b = std::fs::read(prebuilt)
                .with_context(|| format!("cannot read {}", prebuilt.display()))?;
            if a != b {
                bail!(
                    "{} differs from a fresh build ({} vs {} bytes): the guest build is not \
                     reproducible here, or the prebuilt files are stale (--update-prebuilt)",
                    prebuilt.display(),
                    b.len(),
                    a.len()
                );
            }
            eprintln!("xtask: {} matches a fresh build", prebuilt.display());
        }
    }
    Ok(())
}

/// Builds the guest ELFs and packs them into `out`; (name, path, size) per guest.
pub fn build_and_pack(root: &Path, out: &Path) -> anyhow::Result<Vec<(String, PathBuf, usize)>> {
    let guests = root.join("boot-images/guests");
    let target_dir = target_dir(root);
    let flags = [
        "-Crelocation-model=static".to_string(),
        format!("--remap-path-prefix={}=guests", guests.display()),
    ]
    .join("\x1f");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let args = [
        "build",
        "--release",
        "--locked",
        "--target",
        "x86_64-unknown-none",
    ];
    eprintln!(
        "xtask: $ (cd {}) {cargo} {}",
        guests.display(),
        args.join(" ")
    );
    let status = Command::new(&cargo)
        .args(args)
        .current_dir(&guests)
        .env("CARGO_TARGET_DIR", &target_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", flags)
        .env_remove("RUSTFLAGS")
        .status()
        .context("cannot start cargo")?;
    if !status.success() {
        bail!("building the guests failed: {status}");
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut written = Vec::new();
    for name in GUESTS {
        let elf_path = elf_path(&target_dir, name);
        let elf = std::fs::read(&elf_path)
            .with_context(|| format!("cannot read {}", elf_path.display()))?;
        let igvm = relaunch_boot_images::pack_with(&elf, relaunch_boot_images::options_for(name))
            .with_context(|| format!("packing {}", elf_path.display()))?;
        let path = out.join(format!("{name}.igvm"));
        std::fs::write(&path, &igvm).with_context(|| format!("cannot write {}", path.display()))?;
        written.push((name.to_string(), path, igvm.len()));
    }
    Ok(written)
}

/// Where the guests' cargo build puts its output.
fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("guests")
}

/// The ELF of guest `name`.
fn elf_path(target_dir: &Path, name: &str) -> PathBuf {
    target_dir.join("x86_64-unknown-none/release").join(name)
}
