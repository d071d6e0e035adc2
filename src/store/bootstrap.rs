//! `[store] bootstrap_file`: bans to merge at every start, as CSV with EMQX's columns
//! (`as,who,by,reason,at,until`; only `as` and `who` required), so an EMQX export works as is.
//! Its bans are the file's (`by = file`), regex bans (`clientid_re`, `username_re`) included;
//! one that has already expired is skipped, not refused.

use std::path::Path;
use std::time::SystemTime;

use super::record::Record;
use crate::policy::{Ban, BanSource};

/// The bans in force at `now` from `path`, or an error naming the line and field at fault.
pub fn read_bootstrap(path: &Path, now: SystemTime) -> Result<Vec<Ban>, String> {
    let at = |line: u64, e: &str| format!("{}:{line}: {e}", path.display());
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .comment(Some(b'#'))
        .flexible(true)
        .from_path(path)
        .map_err(|e| format!("[store] bootstrap_file {}: {e}", path.display()))?;
    let headers = reader.headers().map_err(|e| at(1, &e.to_string()))?.clone();
    let column = |name: &str| headers.iter().position(|h| h.eq_ignore_ascii_case(name));
    let (Some(kind), Some(who)) = (column("as"), column("who")) else {
        return Err(at(
            1,
            "the header must name the columns as,who (and optionally by,reason,at,until)",
        ));
    };
    let (reason, created, until) = (column("reason"), column("at"), column("until"));
    let mut bans = Vec::new();
    for row in reader.records() {
        let row = row.map_err(|e| at(e.position().map_or(0, |p| p.line()), &e.to_string()))?;
        let line = row.position().map_or(0, |p| p.line());
        let field = |i: Option<usize>| i.and_then(|i| row.get(i)).unwrap_or_default().to_string();
        let record = Record {
            kind: field(Some(kind)),
            who: field(Some(who)),
            by: "file".into(),
            reason: field(reason),
            at: Some(field(created))
                .filter(|t| !t.is_empty())
                .unwrap_or_else(|| "0".into()),
            until: Some(field(until)).filter(|t| !t.is_empty()),
        };
        let mut ban = record.to_ban().map_err(|e| at(line, &e))?;
        ban.source = BanSource::File;
        if ban.created == SystemTime::UNIX_EPOCH {
            ban.created = now;
        }
        if ban.active(now) {
            bans.push(ban);
        }
    }
    Ok(bans)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Subject;

    fn read(text: &str) -> Result<Vec<Ban>, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bans.csv");
        std::fs::write(&path, text).unwrap();
        read_bootstrap(&path, SystemTime::now())
    }

    #[test]
    fn emqx_columns_with_optional_fields_and_expired_rows_skipped() {
        let bans = read(
            "as,who,by,reason,at,until\n\
             clientid,meter-9,mgmt_api,stolen,2026-01-01T00:00:00Z,\n\
             peerhost_net,198.51.100.0/24,,scanner,,\n\
             # a comment\n\
             username,old,,expired,2020-01-01T00:00:00Z,2020-02-01T00:00:00Z\n",
        )
        .unwrap();
        assert_eq!(bans.len(), 2);
        assert_eq!(bans[0].subject, Subject::ClientId("meter-9".into()));
        assert_eq!(bans[0].source, BanSource::File);
        assert_eq!(bans[0].expires, None);
        assert_eq!(
            bans[1].subject,
            Subject::Cidr("198.51.100.0/24".parse().unwrap())
        );
        // Only the required columns.
        assert_eq!(read("as,who\npeerhost,192.0.2.1\n").unwrap().len(), 1);
    }

    #[test]
    fn errors_name_the_line() {
        let e = read("as,who\nclientid,a\npeerhost,nope\n").unwrap_err();
        assert!(e.contains(":3: who:"), "{e}");
        let e = read("kind,value\nclientid,a\n").unwrap_err();
        assert!(e.contains(":1: the header"), "{e}");
    }
}
