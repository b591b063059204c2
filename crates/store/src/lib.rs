//! Durable control-plane state in SQLite (WAL): ARM resources as JSON documents, scale set
//! instances, and counters. Every write is one transaction, committed before the API answers, so
//! nothing acknowledged is lost when the daemon is killed.
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value;
use std::path::Path;
use std::sync::Mutex;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state database error")]
    Sqlite(#[from] rusqlite::Error),
    #[error("corrupt document in state database for {0}")]
    Corrupt(String, #[source] serde_json::Error),
}

/// Identifies a resource: kind (e.g. `Microsoft.Compute/virtualMachineScaleSets`), subscription,
/// resource group and name. ARM names are case-insensitive; the store compares them so.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub kind: String,
    pub sub: String,
    pub rg: String,
    pub name: String,
}

impl Key {
    pub fn new(kind: &str, sub: &str, rg: &str, name: &str) -> Self {
        Self {
            kind: kind.into(),
            sub: sub.into(),
            rg: rg.into(),
            name: name.into(),
        }
    }
    fn db(&self) -> (String, String, String, String) {
        (
            self.kind.to_ascii_lowercase(),
            self.sub.to_ascii_lowercase(),
            // Resource group names (a group's own key is its name) may hold Unicode letters,
            // which Azure compares without case; other names are ASCII.
            self.rg.to_lowercase(),
            self.name.to_lowercase(),
        )
    }
    /// A stable string form, used to key instances and runtime objects.
    pub fn path(&self) -> String {
        let (k, s, r, n) = self.db();
        format!("{s}/{r}/{k}/{n}")
    }
}

pub struct Store {
    conn: Mutex<Connection>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS resources (
    kind TEXT NOT NULL, sub TEXT NOT NULL, rg TEXT NOT NULL, name TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (kind, sub, rg, name)
);
CREATE TABLE IF NOT EXISTS instances (
    owner TEXT NOT NULL, instance_id INTEGER NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (owner, instance_id)
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
";

fn parse(what: &str, s: String) -> Result<Value, StoreError> {
    serde_json::from_str(&s).map_err(|e| StoreError::Corrupt(what.to_string(), e))
}

impl Store {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    pub fn open_in_memory() -> Result<Self, StoreError> {
        let conn = Connection::open_in_memory()?;
        conn.execute_batch(SCHEMA)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written (transactions), so a
        // poisoned mutex is still safe to use.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn put(&self, key: &Key, body: &Value) -> Result<(), StoreError> {
        let (k, s, r, n) = key.db();
        self.lock().execute(
            "INSERT INTO resources (kind, sub, rg, name, body) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (kind, sub, rg, name) DO UPDATE SET body = excluded.body",
            params![k, s, r, n, body.to_string()],
        )?;
        Ok(())
    }

    pub fn get(&self, key: &Key) -> Result<Option<Value>, StoreError> {
        let (k, s, r, n) = key.db();
        let row: Option<String> = self
            .lock()
            .query_row(
                "SELECT body FROM resources WHERE kind=?1 AND sub=?2 AND rg=?3 AND name=?4",
                params![k, s, r, n],
                |row| row.get(0),
            )
            .optional()?;
        row.map(|b| parse(&key.path(), b)).transpose()
    }

    /// Lists resources of a kind; `sub`/`rg` narrow the scope when given.
    pub fn list(
        &self,
        kind: &str,
        sub: Option<&str>,
        rg: Option<&str>,
    ) -> Result<Vec<(Key, Value)>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT kind, sub, rg, name, body FROM resources WHERE kind=?1 AND (?2 IS NULL OR sub=?2) AND (?3 IS NULL OR rg=?3) ORDER BY sub, rg, name",
        )?;
        let rows = stmt.query_map(
            params![
                kind.to_ascii_lowercase(),
                sub.map(str::to_ascii_lowercase),
                rg.map(str::to_lowercase)
            ],
            |row| {
                Ok((
                    Key {
                        kind: row.get(0)?,
                        sub: row.get(1)?,
                        rg: row.get(2)?,
                        name: row.get(3)?,
                    },
                    row.get::<_, String>(4)?,
                ))
            },
        )?;
        let mut out = Vec::new();
        for r in rows {
            let (key, body) = r?;
            let v = parse(&key.path(), body)?;
            out.push((key, v));
        }
        Ok(out)
    }

    /// Deletes a resource and its instances in one transaction. Returns whether it existed.
    pub fn delete(&self, key: &Key) -> Result<bool, StoreError> {
        let (k, s, r, n) = key.db();
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let n = tx.execute(
            "DELETE FROM resources WHERE kind=?1 AND sub=?2 AND rg=?3 AND name=?4",
            params![k, s, r, n],
        )?;
        tx.execute("DELETE FROM instances WHERE owner=?1", params![key.path()])?;
        tx.commit()?;
        Ok(n > 0)
    }

    pub fn put_instance(&self, owner: &Key, id: u32, body: &Value) -> Result<(), StoreError> {
        self.lock().execute(
            "INSERT INTO instances (owner, instance_id, body) VALUES (?1, ?2, ?3)
             ON CONFLICT (owner, instance_id) DO UPDATE SET body = excluded.body",
            params![owner.path(), id, body.to_string()],
        )?;
        Ok(())
    }

    pub fn instances(&self, owner: &Key) -> Result<Vec<(u32, Value)>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT instance_id, body FROM instances WHERE owner=?1 ORDER BY instance_id",
        )?;
        let rows = stmt.query_map(params![owner.path()], |row| {
            Ok((row.get::<_, u32>(0)?, row.get::<_, String>(1)?))
        })?;
        let mut out = Vec::new();
        for r in rows {
            let (id, body) = r?;
            out.push((id, parse(&format!("{} instance {id}", owner.path()), body)?));
        }
        Ok(out)
    }

    pub fn delete_instance(&self, owner: &Key, id: u32) -> Result<(), StoreError> {
        self.lock().execute(
            "DELETE FROM instances WHERE owner=?1 AND instance_id=?2",
            params![owner.path(), id],
        )?;
        Ok(())
    }

    /// Atomically adds `by` to a named counter and returns the value before the addition.
    pub fn bump(&self, name: &str, by: u64) -> Result<u64, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let cur: i64 = tx
            .query_row(
                "SELECT value FROM counters WHERE name=?1",
                params![name],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(0);
        tx.execute(
            "INSERT INTO counters (name, value) VALUES (?1, ?2) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            params![name, cur + by as i64],
        )?;
        tx.commit()?;
        Ok(cur as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn crud_is_case_insensitive_and_durable() {
        let dir = std::env::temp_dir().join(format!("scaleset-store-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.db");
        let key = Key::new(
            "Microsoft.Compute/virtualMachineScaleSets",
            "sub",
            "RG",
            "VmSs",
        );
        {
            let s = Store::open(&path).unwrap();
            s.put(&key, &json!({"a": 1})).unwrap();
            s.put_instance(&key, 0, &json!({"i": 0})).unwrap();
            s.put_instance(&key, 2, &json!({"i": 2})).unwrap();
            assert_eq!(s.bump("ids", 3).unwrap(), 0);
            assert_eq!(s.bump("ids", 1).unwrap(), 3);
        }
        let s = Store::open(&path).unwrap();
        let other = Key::new(
            "microsoft.compute/virtualmachinescalesets",
            "SUB",
            "rg",
            "vmss",
        );
        assert_eq!(s.get(&other).unwrap(), Some(json!({"a": 1})));
        assert_eq!(
            s.list(
                "Microsoft.Compute/virtualMachineScaleSets",
                Some("sub"),
                None
            )
            .unwrap()
            .len(),
            1
        );
        assert_eq!(
            s.list(
                "Microsoft.Compute/virtualMachineScaleSets",
                None,
                Some("other")
            )
            .unwrap()
            .len(),
            0
        );
        assert_eq!(
            s.instances(&key)
                .unwrap()
                .iter()
                .map(|x| x.0)
                .collect::<Vec<_>>(),
            vec![0, 2]
        );
        assert_eq!(s.bump("ids", 0).unwrap(), 4);
        s.delete_instance(&key, 0).unwrap();
        assert_eq!(s.instances(&key).unwrap().len(), 1);
        assert!(s.delete(&key).unwrap());
        assert!(!s.delete(&key).unwrap());
        assert!(s.instances(&key).unwrap().is_empty());
        assert_eq!(s.get(&key).unwrap(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
