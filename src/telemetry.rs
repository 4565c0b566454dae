//! Logging set-up and the guards that keep callers from abusing the log: `tracing` events in a
//! human format (colours only on a terminal) or JSON lines with `LOG_FORMAT=json`; caller-made
//! text is clipped ([`clip`]) and always logged as a quoted string value, never with `%`
//! (Display), so it cannot forge `key=value` fields; refusals are logged within a budget
//! ([`LogBudget`]) so a flood of bad requests cannot flood the disk.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing_subscriber::EnvFilter;

/// Longest piece of caller-controlled text written to the log.
pub const MAX_LOGGED_FIELD: usize = 256;

pub fn init(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(!json && std::io::stderr().is_terminal());
    if json {
        builder.json().flatten_event(true).with_current_span(false).init();
    } else {
        builder.init();
    }
}

/// At most [`MAX_LOGGED_FIELD`] bytes of `text`, cut at a character boundary. Log the result as
/// a `&str` field (`field = clip(x)`): the text format then quotes and escapes it (control
/// characters, quotes, ANSI escapes), and the JSON format writes it as a JSON string.
pub fn clip(text: &str) -> &str {
    if text.len() <= MAX_LOGGED_FIELD {
        return text;
    }
    let mut end = MAX_LOGGED_FIELD;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A per-second allowance of log events. Events beyond it are counted, not written; the next
/// event written reports how many were left out, so the log stays honest and bounded.
#[derive(Debug)]
pub struct LogBudget {
    per_second: u32,
    /// (start of the current second, events written in it, events left out since the last one
    /// written). Never held across an `.await`.
    state: Mutex<(Instant, u32, u64)>,
}

impl LogBudget {
    pub fn new(per_second: u32) -> LogBudget {
        LogBudget {
            per_second,
            state: Mutex::new((Instant::now(), 0, 0)),
        }
    }

    /// `Some(left_out)` when an event may be written now (with the number of events left out
    /// before it), `None` when it is over budget.
    pub fn take(&self) -> Option<u64> {
        self.take_at(Instant::now())
    }

    fn take_at(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().expect("log budget lock");
        let (window, used, left_out) = &mut *state;
        if now.duration_since(*window) >= Duration::from_secs(1) {
            *window = now;
            *used = 0;
        }
        if *used >= self.per_second {
            *left_out += 1;
            return None;
        }
        *used += 1;
        Some(std::mem::take(left_out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_cuts_long_text_at_a_character_boundary() {
        assert_eq!(clip("short"), "short");
        let long = "é".repeat(200); // 400 bytes
        let clipped = clip(&long);
        assert!(clipped.len() <= MAX_LOGGED_FIELD && clipped.len() >= MAX_LOGGED_FIELD - 1);
        assert!(clipped.chars().all(|c| c == 'é'));
    }

    #[test]
    fn the_budget_counts_what_it_leaves_out() {
        let budget = LogBudget::new(3);
        let t0 = Instant::now();
        assert_eq!(budget.take_at(t0), Some(0));
        assert_eq!(budget.take_at(t0), Some(0));
        assert_eq!(budget.take_at(t0), Some(0));
        assert_eq!(budget.take_at(t0), None);
        assert_eq!(budget.take_at(t0 + Duration::from_millis(500)), None);
        assert_eq!(budget.take_at(t0 + Duration::from_millis(1000)), Some(2));
        assert_eq!(budget.take_at(t0 + Duration::from_millis(1001)), Some(0));
    }
}
