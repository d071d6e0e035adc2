//! Config errors that point at the place in the file: key path and line.

use std::fmt;

use toml::de::{DeTable, DeValue};

#[derive(Debug)]
pub struct ConfigError {
    message: String,
}

impl ConfigError {
    pub(crate) fn plain(message: String) -> Self {
        ConfigError { message }
    }

    /// A syntax or type error from the TOML parser, which already names line and key.
    pub(crate) fn from_toml(e: &toml::de::Error) -> Self {
        ConfigError {
            message: e.to_string().trim_end().to_string(),
        }
    }

    /// A semantic error at `key` (`listener[0].tls.certificates[1].cert`), located in `text`.
    pub(crate) fn at_key(text: &str, key: &str, msg: String) -> Self {
        let message = match line_of_key(text, key) {
            Some(line) => format!("{key} (line {line}): {msg}"),
            None => format!("{key}: {msg}"),
        };
        ConfigError { message }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// 1-based line of the deepest part of `key` present in the document.
fn line_of_key(text: &str, key: &str) -> Option<usize> {
    let root = DeTable::parse(text).ok()?;
    let mut table: &DeTable<'_> = root.get_ref();
    let mut offset = None;
    for segment in key.split('.') {
        let (name, index) = match segment.split_once('[') {
            Some((n, rest)) => (n, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (segment, None),
        };
        let (k, v) = table.iter().find(|(k, _)| k.get_ref().as_ref() == name)?;
        offset = Some(k.span().start);
        let mut value: &DeValue<'_> = v.get_ref();
        if let Some(i) = index {
            let item = value.as_array()?.get(i)?;
            offset = Some(item.span().start);
            value = item.get_ref();
        }
        match value.as_table() {
            Some(t) => table = t,
            None => break,
        }
    }
    offset.map(|o| text[..o.min(text.len())].matches('\n').count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nested_keys_and_array_items() {
        let text = "a = 1\n[routes.mqtt]\nupstreams = []\n\n[[listener]]\nbind = \"x\"\n[[listener]]\nbind = \"y\"\n";
        assert_eq!(line_of_key(text, "routes.mqtt.upstreams"), Some(3));
        assert_eq!(line_of_key(text, "listener[1].bind"), Some(8));
        assert_eq!(line_of_key(text, "nope"), None);
    }
}
