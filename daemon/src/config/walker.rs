//! The key walker: reads a TOML table key by key, records every problem with its key path, and reports
//! the keys nobody read as unknown. Each section's `parse` uses it; nothing here knows any section.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;

use super::ConfigIssue;

/// A table being read, remembering which keys were consumed so the rest can be reported as unknown.
pub struct Table<'a> {
    prefix: String,
    pub table: &'a toml::Table,
    seen: std::cell::RefCell<BTreeSet<String>>,
}

impl<'a> Table<'a> {
    pub fn new(prefix: &str, table: &'a toml::Table) -> Self {
        Table {
            prefix: prefix.to_owned(),
            table,
            seen: Default::default(),
        }
    }

    pub fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    pub fn take(&self, name: &str) -> Option<&'a toml::Value> {
        self.seen.borrow_mut().insert(name.to_owned());
        self.table.get(name)
    }
}

/// Collects the problems found while reading.
#[derive(Default)]
pub struct Walker {
    pub issues: Vec<ConfigIssue>,
}

impl Walker {
    pub fn issue(&mut self, key: &str, message: impl Into<String>) {
        self.issues.push(ConfigIssue {
            key: key.to_owned(),
            message: message.into(),
        });
    }

    pub fn type_issue(
        &mut self,
        section: &Table<'_>,
        name: &str,
        expected: &str,
        found: &toml::Value,
    ) {
        self.issue(
            &section.key(name),
            format!("expected {expected}, found {}", found.type_str()),
        );
    }

    pub fn finish(&mut self, table: Table<'_>) {
        let seen = table.seen.borrow();
        for key in table.table.keys() {
            if !seen.contains(key) {
                self.issue(&table.key(key), "unknown key");
            }
        }
    }

    pub fn table<'a>(&mut self, section: &Table<'a>, name: &str) -> Option<Table<'a>> {
        match section.take(name)? {
            toml::Value::Table(table) => Some(Table::new(&section.key(name), table)),
            other => {
                self.type_issue(section, name, "a table", other);
                None
            }
        }
    }

    pub fn array_of_tables<'a>(
        &mut self,
        section: &Table<'a>,
        name: &str,
    ) -> Option<Vec<&'a toml::Table>> {
        let toml::Value::Array(items) = section.take(name)? else {
            let found = section.table.get(name)?;
            self.type_issue(section, name, "an array of tables ([[grants]])", found);
            return None;
        };
        let mut tables = Vec::new();
        for (i, item) in items.iter().enumerate() {
            match item {
                toml::Value::Table(table) => tables.push(table),
                other => self.issue(
                    &format!("{}[{i}]", section.key(name)),
                    format!("expected a table, found {}", other.type_str()),
                ),
            }
        }
        Some(tables)
    }

    pub fn string(&mut self, section: &Table<'_>, name: &str, out: &mut String) {
        match section.take(name) {
            None => {}
            Some(toml::Value::String(s)) => *out = s.clone(),
            Some(other) => self.type_issue(section, name, "a string", other),
        }
    }

    pub fn path(&mut self, section: &Table<'_>, name: &str, out: &mut PathBuf) {
        match section.take(name) {
            None => {}
            Some(toml::Value::String(s)) if !s.is_empty() => *out = PathBuf::from(s),
            Some(toml::Value::String(_)) => self.issue(&section.key(name), "must not be empty"),
            Some(other) => self.type_issue(section, name, "a path string", other),
        }
    }

    pub fn boolean(&mut self, section: &Table<'_>, name: &str, out: &mut bool) {
        match section.take(name) {
            None => {}
            Some(toml::Value::Boolean(b)) => *out = *b,
            Some(other) => self.type_issue(section, name, "true or false", other),
        }
    }

    pub fn integer(
        &mut self,
        section: &Table<'_>,
        name: &str,
        range: std::ops::RangeInclusive<u64>,
        out: &mut u64,
    ) {
        match section.take(name) {
            None => {}
            Some(toml::Value::Integer(i)) => match u64::try_from(*i) {
                Ok(v) if range.contains(&v) => *out = v,
                _ => self.issue(
                    &section.key(name),
                    format!("{i} is out of range {}..={}", range.start(), range.end()),
                ),
            },
            Some(other) => self.type_issue(section, name, "an integer", other),
        }
    }

    /// A number (a TOML float, or an integer taken as one) within `range`.
    pub fn float(
        &mut self,
        section: &Table<'_>,
        name: &str,
        range: std::ops::RangeInclusive<f64>,
        out: &mut f64,
    ) {
        let value = match section.take(name) {
            None => return,
            Some(toml::Value::Float(f)) => *f,
            Some(toml::Value::Integer(i)) => *i as f64,
            Some(other) => return self.type_issue(section, name, "a number", other),
        };
        if range.contains(&value) {
            *out = value;
        } else {
            self.issue(
                &section.key(name),
                format!(
                    "{value} is out of range {}..={}",
                    range.start(),
                    range.end()
                ),
            );
        }
    }

    pub fn socket_addr(&mut self, section: &Table<'_>, name: &str, out: &mut SocketAddr) {
        match section.take(name) {
            None => {}
            Some(toml::Value::String(s)) => match s.parse() {
                Ok(addr) => *out = addr,
                Err(_) => self.issue(
                    &section.key(name),
                    format!("{s:?} is not an IP:port address such as \"127.0.0.1:50051\""),
                ),
            },
            Some(other) => self.type_issue(section, name, "an \"IP:port\" string", other),
        }
    }

    pub fn choice<T: Copy>(
        &mut self,
        section: &Table<'_>,
        name: &str,
        choices: &[(&str, T)],
        out: &mut T,
    ) {
        match section.take(name) {
            None => {}
            Some(toml::Value::String(s)) => match choices.iter().find(|(n, _)| n == s) {
                Some((_, v)) => *out = *v,
                None => {
                    let names: Vec<_> = choices.iter().map(|(n, _)| *n).collect();
                    self.issue(
                        &section.key(name),
                        format!("{s:?} is not one of {}", names.join(", ")),
                    )
                }
            },
            Some(other) => self.type_issue(section, name, "a string", other),
        }
    }

    /// A list whose default is replaced, not extended, when the file gives it.
    pub fn replace_list(&mut self, section: &Table<'_>, name: &str, out: &mut Vec<String>) {
        if section.table.contains_key(name) {
            out.clear();
        }
        self.string_list(section, name, out);
    }

    pub fn string_list(&mut self, section: &Table<'_>, name: &str, out: &mut Vec<String>) {
        match section.take(name) {
            None => {}
            Some(toml::Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    match item {
                        toml::Value::String(s) => out.push(s.clone()),
                        other => self.issue(
                            &format!("{}[{i}]", section.key(name)),
                            format!("expected a string, found {}", other.type_str()),
                        ),
                    }
                }
            }
            Some(other) => self.type_issue(section, name, "an array of strings", other),
        }
    }
}

/// A TOML array literal of strings, for default-text fragments.
pub fn toml_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("{s:?}")).collect();
    format!("[{}]", quoted.join(", "))
}

/// Owned strings from literals, for defaults.
pub fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}
