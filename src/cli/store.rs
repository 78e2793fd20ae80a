//! `fieldbridge store check|salvage --db PATH`: the damaged-log handling the daemon does at start, by hand.
use std::io::Write;
use std::path::PathBuf;

use crate::store::{check_file, salvage_file, CheckReport, StoreError};

/// Offline operations on a log file (the daemon must not be running on it: its lock is taken).
#[derive(Debug, clap::Subcommand)]
pub enum StoreCmd {
    /// Check a log: SQLite's quick_check, rows, seqs and cursors. Exit 0 if sound, 1 if damaged.
    Check {
        /// The database file (`storage.path`).
        #[arg(long)]
        db: PathBuf,
    },
    /// Move a damaged log aside (`<db>.corrupt-<time>`) and salvage what can be read into a new one.
    Salvage {
        /// The database file (`storage.path`).
        #[arg(long)]
        db: PathBuf,
        /// Salvage even if the check finds nothing wrong.
        #[arg(long)]
        force: bool,
    },
}

fn describe(r: &CheckReport, out: &mut impl Write) {
    let _ = writeln!(
        out,
        "{}: {}",
        r.path.display(),
        r.problem
            .as_deref()
            .map_or("ok".to_string(), |p| format!("DAMAGED: {p}"))
    );
    if let Some(n) = r.rows {
        let _ = writeln!(out, "  rows: {n}");
    }
    if let Some((lo, hi)) = r.seqs {
        let _ = writeln!(out, "  seqs: {lo}..={hi}");
    }
    for (name, seq) in &r.cursors {
        let _ = writeln!(out, "  cursor {name}: {seq}");
    }
}

/// Runs the command; returns the exit code (0 sound/salvaged, 1 damaged or failed).
pub fn store_main(cmd: &StoreCmd, out: &mut impl Write, err: &mut impl Write) -> u8 {
    let fail = |err: &mut dyn Write, e: StoreError| {
        let _ = writeln!(err, "fieldbridge store: {e}");
        1
    };
    let db = match cmd {
        StoreCmd::Check { db } | StoreCmd::Salvage { db, .. } => db,
    };
    if let Some(why) = super::not_a_log_file(db) {
        let _ = writeln!(err, "fieldbridge store: {why}");
        return 1;
    }
    match cmd {
        StoreCmd::Check { db } => match check_file(db) {
            Ok(r) => {
                describe(&r, out);
                u8::from(r.problem.is_some())
            }
            Err(e) => fail(err, e),
        },
        StoreCmd::Salvage { db, force } => match salvage_file(db, *force) {
            Ok(Ok(report)) => {
                let _ = writeln!(out, "{}: salvaged: {report}", db.display());
                0
            }
            Ok(Err(r)) => {
                describe(&r, out);
                let _ = writeln!(out, "nothing to salvage (use --force to rebuild it anyway)");
                0
            }
            Err(e) => fail(err, e),
        },
    }
}
