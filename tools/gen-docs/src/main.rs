//! `fieldbridge-gen-docs OUT_DIR`: writes the man pages (`man1/fieldbridge.1` and one page per subcommand,
//! `fieldbridge-run.1`, …) and the bash, zsh and fish completions of the `fieldbridge` command, generated from
//! its clap definition, for `packaging/build-debs`.
//!
//! Why a separate tool and not a hidden `fieldbridge generate` subcommand: the generators (clap_complete,
//! clap_mangen) would then ship in every daemon binary, on every Pi, to run once at packaging time. The daemon's
//! own `src/main.rs` is compiled into this tool as a module, so the pages describe exactly the CLI that ships
//! (same arguments, same help text, same features), with no second copy of its definition to keep in step.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::CommandFactory;
use clap_complete::Shell;

#[allow(dead_code)]
#[path = "../../../src/main.rs"]
mod daemon;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(out), None) = (args.next(), args.next()) else {
        eprintln!("usage: fieldbridge-gen-docs OUT_DIR");
        return ExitCode::from(2);
    };
    match generate(Path::new(&out)) {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fieldbridge-gen-docs: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Writes everything under `out`; returns the files written.
fn generate(out: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut cmd = daemon::Cli::command();
    cmd.build();
    let mut written = Vec::new();

    let man = out.join("man1");
    std::fs::create_dir_all(&man)?;
    write_pages(&cmd, &man, &mut written)?;

    let completions = out.join("completions");
    std::fs::create_dir_all(&completions)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let path = clap_complete::generate_to(shell, &mut cmd, "fieldbridge", &completions)?;
        written.push(path);
    }
    Ok(written)
}

/// One page for `cmd`, then one per visible subcommand. After `Command::build`, a subcommand's display name is
/// its full name (`fieldbridge-modbus-read`), which is also what the parent's page cross-references.
fn write_pages(cmd: &clap::Command, dir: &Path, written: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let name = cmd.get_display_name().unwrap_or_else(|| cmd.get_name());
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut buf)?;
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, buf)?;
    written.push(path);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        if sub.get_name() != "help" {
            write_pages(sub, dir, written)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_pages_for_every_subcommand_and_three_completions() {
        let dir = tempfile_dir();
        let files = generate(&dir).unwrap();
        let names: Vec<String> = files
            .iter()
            .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        for expected in [
            "fieldbridge.1",
            "fieldbridge-run.1",
            "fieldbridge-check.1",
            "fieldbridge-status.1",
            "fieldbridge.bash",
            "_fieldbridge",
            "fieldbridge.fish",
        ] {
            assert!(
                names.iter().any(|n| n == expected),
                "{expected} in {names:?}"
            );
        }
        let main = std::fs::read_to_string(dir.join("man1/fieldbridge.1")).unwrap();
        assert!(
            main.starts_with(".ie"),
            "roff: {}",
            &main[..40.min(main.len())]
        );
        assert!(
            main.contains("fieldbridge\\-run(1)"),
            "subcommands are cross-referenced"
        );
        let run = std::fs::read_to_string(dir.join("man1/fieldbridge-run.1")).unwrap();
        assert!(
            run.contains("/etc/fieldbridge/fieldbridge.yaml"),
            "defaults shown"
        );
        let bash = std::fs::read_to_string(dir.join("completions/fieldbridge.bash")).unwrap();
        assert!(bash.contains("complete -F _fieldbridge"), "bash completion");
        assert!(bash.contains("check"), "subcommands completed");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("fieldbridge-gen-docs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
