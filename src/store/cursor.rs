//! The opaque paging cursor of [`super::Store::list`]: the `(created_at, run_id)` of the last
//! record of a page, as `<created_at>.<hex of run_id>` so that it is URL-safe whatever the run id
//! holds. Clients must treat it as opaque; anything that does not decode is refused.

/// A position in the newest-first order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub created_at: i64,
    pub run_id: String,
}

impl Cursor {
    pub fn encode(&self) -> String {
        let mut out = format!("{}.", self.created_at);
        for b in self.run_id.as_bytes() {
            out.push_str(&format!("{b:02x}"));
        }
        out
    }

    /// `None` when `text` is not a cursor this store made.
    pub fn decode(text: &str) -> Option<Cursor> {
        let (created, hex) = text.split_once('.')?;
        if created.is_empty() || created.len() > 19 || !created.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        if hex.is_empty() || hex.len() % 2 != 0 || hex.len() > 512 {
            return None;
        }
        let bytes = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
            .collect::<Option<Vec<u8>>>()?;
        Some(Cursor {
            created_at: created.parse().ok()?,
            run_id: String::from_utf8(bytes).ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_garbage() {
        let c = Cursor {
            created_at: 1_764_549_363_123,
            run_id: "3f0c/é.x".into(),
        };
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
        for bad in [
            "",
            ".",
            "12.",
            ".61",
            "x.61",
            "12.6",
            "12.zz",
            "-1.61",
            "12.ff",
            "99999999999999999999.61",
        ] {
            assert_eq!(Cursor::decode(bad), None, "{bad:?}");
        }
    }
}
